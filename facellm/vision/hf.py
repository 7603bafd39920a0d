"""transformers' CLIP and SigLIP vision models (and converted OpenCLIP ones) as vision towers."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from .base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig, VisionConfigError, VisionOutput, \
    VisionTower, map_to_output

CLIP_TYPES = ("clip", "clip_vision_model")
SIGLIP_TYPES = ("siglip", "siglip_vision_model")


class VisionModelNotFoundError(VisionConfigError):
    """A vision model folder or hub id could not be found (offline, or a wrong path)."""


@contextlib.contextmanager
def _quiet_transformers():
    """Loading a vision model out of a full CLIP/SigLIP checkpoint prints a table of every unused text tensor."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _resample_name(value) -> str:
    return {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(value, "bicubic")


def preprocess_from_folder(name_or_path: str, family: str, image_size: int, mode: str,
                           local_files_only: bool = True) -> PreprocessConfig:
    """Mean / std / resample from the model's preprocessor_config.json, else the family's defaults."""
    from transformers.utils import cached_file

    siglip = family == "siglip"
    mean, std = ((0.5,) * 3, (0.5,) * 3) if siglip else (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    resample = "bicubic"
    try:
        found = cached_file(name_or_path, "preprocessor_config.json", local_files_only=local_files_only,
                            _raise_exceptions_for_missing_entries=False)
    except OSError:
        found = None
    if found:
        pc = json.loads(Path(found).read_text())
        mean, std = tuple(pc.get("image_mean", mean)), tuple(pc.get("image_std", std))
        resample = _resample_name(pc.get("resample", 3))
    return PreprocessConfig(size=(image_size, image_size), mode=mode, mean=mean, std=std, resample=resample)


class HFVisionTower(VisionTower):
    """A ViT from transformers. ``feature_layer`` indexes the encoder's hidden states as LLaVA's
    ``vision_feature_layer`` does (0 = embeddings, -1 = last block, before any post-LayerNorm); the class token,
    if any, is dropped from ``tokens``. Inputs larger or smaller than the trained size get interpolated
    position embeddings (sides must be multiples of the patch size)."""

    def __init__(self, model, family: str, *, feature_layer: int | None = None, frozen: bool = True,
                 preprocess: PreprocessConfig | None = None) -> None:
        super().__init__(frozen=frozen)
        self.family = family
        self.model = model
        cfg = self.encoder.config
        self.has_cls = family in ("clip", "open_clip")
        self.hidden_size = cfg.hidden_size
        self.stride = cfg.patch_size
        self.trained_size = cfg.image_size
        n_states = cfg.num_hidden_layers + 1
        default = -2 if self.has_cls else -1  # LLaVA-1.5 takes CLIP's penultimate block; SigLIP towers the last
        self.feature_layer = default if feature_layer is None else int(feature_layer)
        if not -n_states <= self.feature_layer < n_states:
            raise VisionConfigError(f"feature_layer {feature_layer} is out of range for {n_states} hidden states")
        self.preprocess_config = preprocess or PreprocessConfig(size=(cfg.image_size, cfg.image_size), mode="pad",
                                                                mean=(0.5,) * 3 if family == "siglip" else
                                                                OPENAI_CLIP_MEAN,
                                                                std=(0.5,) * 3 if family == "siglip" else
                                                                OPENAI_CLIP_STD)
        self.freeze(frozen)

    @property
    def encoder(self):
        # CLIPVisionModelWithProjection wraps the encoder in .vision_model; the bare models are the encoder.
        # (A property, not a second submodule, so the weights appear once in state_dict.)
        return getattr(self.model, "vision_model", self.model)

    @property
    def projection(self):
        return getattr(self.model, "visual_projection", None)

    def _forward(self, pixel_values: torch.Tensor) -> VisionOutput:
        b, _, h, w = pixel_values.shape
        p = self.stride
        if h % p or w % p:
            raise VisionConfigError(f"input {h}x{w} is not a multiple of the patch size {p}")
        out = self.encoder(pixel_values, output_hidden_states=True,
                           interpolate_pos_encoding=(h, w) != (self.trained_size, self.trained_size))
        states = out.hidden_states[self.feature_layer]
        if self.has_cls:
            states = states[:, 1:]
        fmap = states.transpose(1, 2).reshape(b, self.hidden_size, h // p, w // p)
        pooled = out.pooler_output
        embeds = self.projection(pooled) if self.projection is not None and pooled is not None else None
        return map_to_output(fmap, pooled=pooled, image_embeds=embeds)


def _model_class(model_type: str, architectures: list[str]):
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection, SiglipVisionModel

    if model_type in CLIP_TYPES:
        # only a vision-only folder saved WithProjection has the projection sized by its own config
        if model_type == "clip_vision_model" and "CLIPVisionModelWithProjection" in (architectures or []):
            return CLIPVisionModelWithProjection, "clip"
        return CLIPVisionModel, "clip"
    if model_type in SIGLIP_TYPES:
        return SiglipVisionModel, "siglip"
    raise VisionConfigError(f"model type {model_type!r} is not a supported vision tower; "
                            f"supported: {', '.join(CLIP_TYPES + SIGLIP_TYPES)}")


def load_hf_tower(name_or_path: str, *, feature_layer: int | None = None, frozen: bool = True,
                  dtype: torch.dtype = torch.float32, resize_mode: str = "pad", image_size: int | None = None,
                  local_files_only: bool | None = None, family: str | None = None) -> HFVisionTower:
    """Load a CLIP / SigLIP vision model from a local folder or a hub id (cached or, if allowed, downloaded)."""
    from transformers import AutoConfig

    from facellm.lm import hub_offline

    offline = hub_offline() if local_files_only is None else local_files_only
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=offline)
    except (OSError, ValueError) as err:
        where = "a local folder" if Path(name_or_path).expanduser().exists() else "a folder or a cached hub id"
        hint = " (offline: HF_HUB_OFFLINE is set, so nothing is downloaded)" if offline else ""
        raise VisionModelNotFoundError(f"cannot load vision model {name_or_path!r}: not {where} with a "
                                       f"config.json{hint}. Pass a local folder with config.json and weights.") \
            from err
    cls, fam = _model_class(config.model_type, getattr(config, "architectures", None))
    with _quiet_transformers():
        model = cls.from_pretrained(name_or_path, dtype=dtype, local_files_only=offline)
    size = image_size or model.config.image_size
    pre = preprocess_from_folder(name_or_path, fam, size, resize_mode, offline)
    return HFVisionTower(model.eval(), family or fam, feature_layer=feature_layer, frozen=frozen, preprocess=pre)
