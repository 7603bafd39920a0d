"""FaceLLM inside vLLM: FaceLLM's own vision tower, region encoder and projector + vLLM's implementation of the LM.

The towers are the same PyTorch modules FaceLLM uses (kept in float32, as in FaceLLM), and the image encoding
is FaceLLM's own ``encode_images``; the LM is built by vLLM from ``text_config`` (paged attention, continuous
batching). Weights: the model folder's model.safetensors (region encoder, projector, the placeholder rows,
the tower if it was trained), the LM's safetensors from the folder ``lm_name_or_path`` refers to, widened by
the placeholder rows; a LoRA adapter in ``lora/`` is folded into the LM weights while loading (``weights.py``;
vLLM's own LoRA would apply to the LM only anyway).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.attribute_tokens import AttributeTokens
from facellm.projector import Projector
from facellm.region_encoder import RegionEncoder
from facellm.vision import VisionTowerConfig, build_vision_tower

from .config import lm_folder
from .weights import lm_weights
from .processing import (FACE_FIELDS, FaceLLMDummyInputsBuilder, FaceLLMMultiModalProcessor,
                         FaceLLMProcessingInfo)


def _as_batch(x) -> torch.Tensor | None:
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return torch.stack([torch.as_tensor(t) for t in x])
    return x


class FaceLLMVllmModel(nn.Module, SupportsMultiModal):
    # FaceLLM's own image encoding (``encode_images``, called unbound on this model) uses these helpers too
    _pool_patches = getattr(FaceLLMForConditionalGeneration, "_pool_patches", None)

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        raise ValueError("FaceLLM takes images only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model_dir = Path(vllm_config.model_config.model)
        text_config = config.text_config
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = build_vision_tower(VisionTowerConfig.from_dict(
                {**config.vision, "frozen": True})).float()
            vis_dim = self.vision_tower.hidden_size
            self.region_encoder = RegionEncoder(config, vis_dim).float() if config.use_region_encoder else None
            in_dim = config.region_dim if config.use_region_encoder else vis_dim
            self.projector = Projector(in_dim, text_config.hidden_size, config.projector_hidden,
                                       # the gain's value comes with the checkpoint's weights
                                       out_rms=1.0 if getattr(config, "projector_norm", False) else None).float()
            self.attribute_tokens = (AttributeTokens(vis_dim, config.attribute_word_ids).float()
                                     if getattr(config, "attribute_tokens", False) else None)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(vllm_config=vllm_config, hf_config=text_config,
                                                             prefix=maybe_prefix(prefix, "language_model"))
        self.configure_mm_token_handling(text_config.vocab_size, [config.image_token_id, config.face_token_id])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def _embed_words(self, ids: torch.Tensor) -> torch.Tensor:  # the attribute tokens' word embeddings
        emb = self.language_model.model.embed_tokens
        return emb(ids.to(emb.weight.device))

    # ------------------------------------------------------------ images -> embeddings (FaceLLM's own code)
    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        pixel_values = _as_batch(kwargs.get("pixel_values"))
        if pixel_values is None:
            return []
        face = {k: _as_batch(kwargs.get(k)) for k in FACE_FIELDS if kwargs.get(k) is not None}
        with torch.no_grad():
            per_image = FaceLLMForConditionalGeneration.encode_images(self, pixel_values.float(), **face)
        dtype = self.language_model.model.embed_tokens.weight.dtype
        return tuple(t.to(dtype) for t in per_image)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    # ------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        state = dict(weights)
        for prefix, module in (("region_encoder", self.region_encoder), ("projector", self.projector),
                               ("vision_tower", self.vision_tower), ("attribute_tokens", self.attribute_tokens)):
            part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
            if module is None or (prefix == "vision_tower" and not part):
                continue  # a frozen tower keeps the pretrained weights it was built with
            part = {k: v.float() for k, v in part.items()}
            if prefix == "vision_tower":
                module.load_feature_state_dict(part)  # a tuned tower: the weights its feature uses
            else:
                module.load_state_dict(part, strict=True)
        folder = lm_folder(self.config, self.model_dir)
        weights_iter = lm_weights(folder, self.model_dir, self.config, state, self.config.text_config.vocab_size)
        loaded = {f"language_model.{n}" for n in self.language_model.load_weights(weights_iter)}
        lm_params = {f"language_model.{n}" for n, _ in self.language_model.named_parameters()}
        missing = lm_params - loaded
        if missing:
            raise ValueError(f"LM weights missing from {folder}: {sorted(missing)[:5]}")
        return {n for n, _ in self.named_parameters()}


MULTIMODAL_REGISTRY.register_processor(FaceLLMMultiModalProcessor, info=FaceLLMProcessingInfo,
                                       dummy_inputs=FaceLLMDummyInputsBuilder)(FaceLLMVllmModel)
