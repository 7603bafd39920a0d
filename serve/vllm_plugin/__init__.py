"""FaceLLM as an out-of-tree vLLM model.

vLLM finds it through the ``vllm.general_plugins`` entry point (pyproject)::

    [project.entry-points."vllm.general_plugins"]
    facellm = "facellm.serve.vllm_plugin:register"

``register()`` runs in every vLLM process; it is idempotent. It teaches vLLM's config loader the "facellm"
model type (``config.FaceLLMVllmConfig``: the FaceLLM config plus the LM's config as ``text_config``) and
registers ``FaceLLMForConditionalGeneration`` -> ``model.FaceLLMVllmModel`` (whose module registers the
multimodal processor, ``processing.FaceLLMMultiModalProcessor``).

What runs where: the face tools (``facellm.tools.analyze``, mesh -> landmark groups -> region points), image
preprocessing and the placeholder span of each image are computed in vLLM's *multimodal processing step*
(``FaceLLMMultiModalProcessor``, in the front-end process, cached per image); the vision tower, region encoder
and projector run in vLLM's model (``embed_multimodal``); the LM is vLLM's own implementation (paged KV
cache, continuous batching).
"""

from __future__ import annotations

from pathlib import Path

ARCHITECTURE = "FaceLLMForConditionalGeneration"
MODEL_CLASS = "facellm.serve.vllm_plugin.model:FaceLLMVllmModel"


def register() -> None:
    from vllm import ModelRegistry

    from .config import register_config

    register_config()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _register_in_vllm_processes() -> None:
    """Register on import when vLLM is already loaded. vLLM on CPU spawns its engine process, which unpickles
    the FaceLLM config class from this package: importing it there registers the model too, so serving works
    before (or without) the entry point being installed. Plain imports without vLLM stay light."""
    import sys

    if "vllm" in sys.modules:
        register()


_register_in_vllm_processes()
