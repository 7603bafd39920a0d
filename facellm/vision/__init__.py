"""Vision towers, pluggable by name, all with one interface.

    tower = build_vision_tower("efficientnet-lite0")                 # default, offline, ImageNet weights
    tower = build_vision_tower("efficientnet-lite0", feature="head")  # 1280 x 7 x 7 instead of 112 x 14 x 14
    tower = build_vision_tower("/models/clip-vit-base-patch16")       # HF CLIP / SigLIP folder or hub id
    tower = build_vision_tower("open_clip:ViT-B-16", checkpoint="/ckpt/open_clip_pytorch_model.bin")

    batch = tower.preprocess([pil_image, "photo.jpg"])   # VisionInputs: pixel_values + coordinate transforms
    out = tower(batch)                                    # VisionOutput: feature_map (B,C,H',W'), tokens (B,N,C)
    grid_xy = batch.to_grid(landmarks_xy, index=0, stride=tower.stride)

Names: "efficientnet-lite0"; "open_clip:<ARCH>" (+ checkpoint=FILE) or a checkpoint FILE (+ architecture=ARCH);
anything else is a transformers folder or hub id whose config.json says clip / clip_vision_model / siglip /
siglip_vision_model. Towers are frozen by default (no gradients, eval mode).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from .base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig, VisionConfigError, VisionInputs, VisionOutput, VisionTower, grid_centers, \
    preprocess_images
from .efficientnet import STAGE_NAMES, EfficientNetTower
from .hf import HFVisionTower, VisionModelNotFoundError, load_hf_tower
from .openclip import OPENCLIP_ARCHS, convert_openclip_checkpoint, load_openclip_vision, openclip_to_hf

DEFAULT_TOWER = "efficientnet-lite0"
_EFFNET_NAMES = ("efficientnet-lite0", "efficientnet_lite0")
_CKPT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


@dataclass
class VisionTowerConfig:
    """Everything needed to rebuild a tower; JSON-friendly (``to_dict`` / ``from_dict``) for model folders.

    feature: EfficientNet stage name (see ``STAGE_NAMES``; default "stage5", 112 x 14 x 14 at 224 px) or, for
        ViTs, the hidden-state index (default -2 for CLIP / OpenCLIP, -1 for SigLIP).
    image_size: model input side in pixels (default: 224, or the ViT's trained size).
    resize_mode: "pad" (default: letterbox, keeps every face), "crop" or "squash"; see ``PreprocessConfig``.
    """

    name: str = DEFAULT_TOWER
    checkpoint: str | None = None  # OpenCLIP checkpoint file for "open_clip:<ARCH>"
    architecture: str | None = None  # OpenCLIP architecture when ``name`` is a checkpoint file
    feature: str | int | None = None
    image_size: int | None = None
    resize_mode: str = "pad"
    frozen: bool = True
    dtype: str = "float32"
    pretrained: bool = True  # EfficientNet only: False gives random weights
    local_files_only: bool | None = None  # None: follow HF_HUB_OFFLINE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VisionTowerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise VisionConfigError(f"unknown vision tower option(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    value = getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise VisionConfigError(f"unknown dtype {name!r}")
    return value


def build_vision_tower(name_or_path: str | VisionTowerConfig = DEFAULT_TOWER, **cfg) -> VisionTower:
    """Build a tower from a name, path or ``VisionTowerConfig`` (keyword options as in ``VisionTowerConfig``).

    The returned tower carries its ``config`` so a model folder can record how to rebuild it.
    """
    config = name_or_path if isinstance(name_or_path, VisionTowerConfig) else \
        VisionTowerConfig.from_dict({"name": str(name_or_path), **cfg})
    dtype = _dtype(config.dtype)
    name = config.name
    size = (config.image_size, config.image_size) if config.image_size else None

    if name.lower() in _EFFNET_NAMES:
        stage = config.feature if config.feature is not None else "stage5"
        if not isinstance(stage, str):
            raise VisionConfigError(f"EfficientNet features are chosen by stage name {STAGE_NAMES}, got {stage!r}")
        tower: VisionTower = EfficientNetTower(stage, pretrained=config.pretrained, frozen=config.frozen)
        tower.preprocess_config = PreprocessConfig(**{**tower.preprocess_config.to_dict(),
                                                      "mode": config.resize_mode,
                                                      "size": size or tower.preprocess_config.size})
    elif name.lower().startswith(("open_clip:", "openclip:")) or name.endswith(_CKPT_SUFFIXES):
        if name.endswith(_CKPT_SUFFIXES):
            ckpt, arch = name, config.architecture
        else:
            ckpt, arch = config.checkpoint, name.split(":", 1)[1] or config.architecture
        if not ckpt:
            raise VisionConfigError(f"{name!r} needs checkpoint=<file> (.bin/.pt/.pth/.safetensors)")
        model = load_openclip_vision(ckpt, arch, dtype=dtype)
        trained = model.config.image_size
        pre = PreprocessConfig(size=size or (trained, trained), mode=config.resize_mode, mean=OPENAI_CLIP_MEAN,
                               std=OPENAI_CLIP_STD, resample="bicubic")
        tower = HFVisionTower(model, "open_clip", feature_layer=_layer(config.feature), frozen=config.frozen,
                              preprocess=pre)
    else:
        tower = load_hf_tower(name, feature_layer=_layer(config.feature), frozen=config.frozen, dtype=dtype,
                              resize_mode=config.resize_mode, image_size=config.image_size,
                              local_files_only=config.local_files_only)
    tower.to(dtype)
    tower.config = config
    return tower


def _layer(feature: str | int | None) -> int | None:
    if feature is None:
        return None
    try:
        return int(feature)
    except (TypeError, ValueError):
        raise VisionConfigError(f"ViT features are chosen by hidden-state index (e.g. -2), got {feature!r}") from None


__all__ = [
    "DEFAULT_TOWER", "EfficientNetTower", "HFVisionTower", "OPENCLIP_ARCHS", "PreprocessConfig", "STAGE_NAMES",
    "VisionConfigError", "VisionInputs", "VisionModelNotFoundError", "VisionOutput", "VisionTower",
    "VisionTowerConfig", "build_vision_tower", "convert_openclip_checkpoint", "grid_centers",
    "load_openclip_vision", "openclip_to_hf", "preprocess_images",
]
