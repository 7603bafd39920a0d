"""The default FaceLLM model folder: EfficientNet-Lite0 + face-region encoder + SmolLM2-135M-Instruct.

``facellm setup`` assembles it once into ``$FACELLM_HOME/models/facellm-default`` (the layout of
``save_pretrained``: config.json, model.safetensors with the small new modules, processor and tokenizer files;
the LM and the tower are referenced, not copied). The small trained parts ship inside the package
(``facellm/pretrained/default/``) once a training run has produced them; until then the folder holds a
reproducible, seeded *untrained* initialisation, and ``is_trained`` says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from facellm.tools.assets import home

DEFAULT_MODEL_NAME = "facellm-default"
SEED = 0
# The trained small parts of the default model, inside the package (written by the training recipe).
SHIPPED = Path(__file__).parent / "pretrained" / "default"
MARKER = "facellm_default.json"  # what the folder was built from, so a newer package rebuilds it


def default_model_dir() -> Path:
    return home() / "models" / DEFAULT_MODEL_NAME


def shipped_weights() -> Path | None:
    """The package's trained default-model folder, if this version ships one."""
    return SHIPPED if (SHIPPED / "config.json").is_file() and (SHIPPED / "model.safetensors").is_file() else None


def _source_id() -> dict:
    import hashlib

    src = shipped_weights()
    if src is None:  # rebuilt whenever the default configuration changes
        return {"trained": False, "seed": SEED, "config": _source_id_untrained()}
    return {"trained": True, "sha256": hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()}


def is_trained(folder: str | Path | None = None) -> bool:
    """True when the folder holds trained weights (the package's shipped ones or any saved training run)."""
    folder = Path(folder) if folder else default_model_dir()
    marker = folder / MARKER
    if not marker.is_file():
        return True  # a user's own folder: trained by them
    return bool(json.loads(marker.read_text()).get("trained"))


def prepare_default_model(*, force: bool = False, verbose: bool = False) -> Path:
    """Build (or refresh) the default model folder; cheap when it is already up to date."""
    from facellm.lm import prepare_default_lm

    from .configuration import FaceLLMConfig
    from .modeling import FaceLLMForConditionalGeneration

    dest = default_model_dir()
    want = _source_id()
    marker = dest / MARKER
    if not force and marker.is_file() and json.loads(marker.read_text()) == want:
        return dest
    prepare_default_lm(verbose=verbose)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    src = shipped_weights()
    if src is not None:
        shutil.copytree(src, tmp)
        if verbose:
            print(f"default model: trained weights from {src}")
    else:
        torch.manual_seed(SEED)  # the untrained initialisation is reproducible
        FaceLLMForConditionalGeneration(FaceLLMConfig()).save_pretrained(tmp)
        if verbose:
            print("default model: untrained initialisation (no trained weights ship with this version)")
    (tmp / MARKER).write_text(json.dumps(want))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # atomic swap: an interrupted build leaves the old folder or none, never half of one
    return dest


def prepare_untrained_model() -> Path:
    """The default architecture with its seeded, untrained initialisation (a baseline for evaluations)."""
    from .configuration import FaceLLMConfig
    from .modeling import FaceLLMForConditionalGeneration

    dest = home() / "models" / "facellm-untrained"
    want = {"trained": False, "seed": SEED, "config": _source_id_untrained()}
    if (dest / MARKER).is_file() and json.loads((dest / MARKER).read_text()) == want:
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(SEED)
    FaceLLMForConditionalGeneration(FaceLLMConfig()).save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(want))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _source_id_untrained() -> str:
    import hashlib

    from .configuration import FaceLLMConfig

    return hashlib.sha256(FaceLLMConfig().to_json_string(use_diff=False).encode()).hexdigest()[:16]


def load_default_model(**overrides):
    """The default model, built first if needed."""
    from .modeling import FaceLLMForConditionalGeneration

    return FaceLLMForConditionalGeneration.from_pretrained(prepare_default_model(), **overrides)
