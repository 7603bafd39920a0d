"""What every vision tower shares: the image preprocessing, the output type and the frozen/trainable switch.

Preprocessing uses PIL and NumPy only (no torchvision). It also returns, per image, the affine map from the
original image's pixel coordinates to the model input's, so that face boxes and landmarks measured by the
tools on the original image can be placed on the tower's feature grid (``VisionInputs.to_grid``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from facellm.tools.image_io import ImageInput, LoadedImage, as_loaded

ResizeMode = Literal["pad", "crop", "squash"]
TowerImage = Union[ImageInput, LoadedImage, torch.Tensor]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionConfigError(ValueError):
    """A vision tower was asked for something it cannot do (unknown name, stage, layer, bad image)."""


@dataclass
class PreprocessConfig:
    """How an image becomes the tower's input tensor.

    mode:
      - "pad": resize so the whole image fits ``size``, centre it on a canvas of the mean colour (zeros after
        normalisation). Keeps every face of a wide group photo; the default for FaceLLM.
      - "crop": resize the shorter side to ``crop_from`` (default: the shorter side of ``size``), then take the
        centre ``size`` crop. What ImageNet / CLIP evaluation does; may cut off faces near the edges.
      - "squash": resize to ``size`` ignoring the aspect ratio (SigLIP's own preprocessing).
    """

    size: tuple[int, int] = (224, 224)  # (height, width) of the model input
    mode: ResizeMode = "pad"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: str = "bicubic"
    crop_from: int | None = None  # "crop" mode only: the shorter side before cropping

    def __post_init__(self) -> None:
        if isinstance(self.size, int):
            self.size = (self.size, self.size)
        self.size = (int(self.size[0]), int(self.size[1]))
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if self.mode not in ("pad", "crop", "squash"):
            raise VisionConfigError(f"unknown resize mode {self.mode!r}; use 'pad', 'crop' or 'squash'")
        if self.resample not in _RESAMPLE:
            raise VisionConfigError(f"unknown resample {self.resample!r}; use one of {sorted(_RESAMPLE)}")
        if min(self.size) < 8:
            raise VisionConfigError(f"input size {self.size} is too small")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VisionInputs:
    """A preprocessed batch.

    ``transforms[i] = (sx, sy, tx, ty)`` maps a point (x, y) in the original pixels of image i to
    (x * sx + tx, y * sy + ty) in model-input pixels; ``image_sizes[i] = (height, width)`` of the original.
    """

    pixel_values: torch.Tensor  # (B, 3, H, W) float32, normalised
    transforms: torch.Tensor  # (B, 4) float64
    image_sizes: torch.Tensor  # (B, 2) int64

    def to_input(self, points: torch.Tensor | np.ndarray, index: int) -> torch.Tensor:
        """Original-image pixel coordinates (..., 2) of image ``index`` -> model-input pixel coordinates."""
        p = torch.as_tensor(np.asarray(points, dtype=np.float64) if isinstance(points, np.ndarray) else points,
                            dtype=torch.float64)
        sx, sy, tx, ty = self.transforms[index].tolist()
        return torch.stack([p[..., 0] * sx + tx, p[..., 1] * sy + ty], dim=-1)

    def to_grid(self, points: torch.Tensor | np.ndarray, index: int, stride: float) -> torch.Tensor:
        """Original-image pixels -> feature-grid units, where cell (row i, col j) spans [j, j+1) x [i, i+1)."""
        return self.to_input(points, index) / float(stride)


@dataclass
class VisionOutput:
    """What every tower returns.

    feature_map: (B, C, H', W') features of the configured stage / layer, on the input's spatial grid.
    tokens: (B, H'*W', C) the same features flattened row by row (row-major, like ViT patches); no CLS token.
    pooled: (B, D) the tower's own global image feature when it has one (CLIP/SigLIP pooler output,
            the mean of the feature map for a CNN), else None.
    image_embeds: (B, E) the contrastive image embedding when the tower has a projection (OpenCLIP), else None.
    """

    feature_map: torch.Tensor
    tokens: torch.Tensor
    pooled: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def _to_pil(image: TowerImage) -> Image.Image:
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise VisionConfigError(f"a tensor image must be (3, H, W) or (1, H, W), got {tuple(t.shape)}")
        if t.dtype == torch.uint8:
            arr = t.numpy()
        elif t.is_floating_point():
            # float tensors are taken as RGB in [0, 1], the usual torch convention
            arr = (t.float().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
        else:
            raise VisionConfigError(f"unsupported tensor dtype {t.dtype}; use uint8 or float in [0, 1]")
        arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr
        return Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)))
    return Image.fromarray(as_loaded(image).rgb)


def _resize_plan(w: int, h: int, cfg: PreprocessConfig) -> tuple[tuple[int, int], tuple[int, int], float, float]:
    """(resized width, height), (paste/crop x, y) offset and the x / y scales, for one image."""
    out_h, out_w = cfg.size
    if cfg.mode == "squash":
        return (out_w, out_h), (0, 0), out_w / w, out_h / h
    if cfg.mode == "pad":
        s = min(out_w / w, out_h / h)
        rw, rh = max(1, min(out_w, round(w * s))), max(1, min(out_h, round(h * s)))
        return (rw, rh), ((out_w - rw) // 2, (out_h - rh) // 2), rw / w, rh / h
    # crop: the shorter side to crop_from, the longer side scaled and truncated (as torchvision / HF do)
    short = cfg.crop_from or min(out_h, out_w)
    if w <= h:
        rw, rh = short, int(short * h / w)
    else:
        rw, rh = int(short * w / h), short
    if rw < out_w or rh < out_h:
        raise VisionConfigError(f"crop_from={short} is smaller than the crop size {cfg.size}")
    return (rw, rh), (-((rw - out_w) // 2), -((rh - out_h) // 2)), rw / w, rh / h


def preprocess_images(images: TowerImage | Sequence[TowerImage], cfg: PreprocessConfig) -> VisionInputs:
    """Images (paths, bytes, PIL, HxWx3 uint8 arrays, LoadedImage or (3,H,W) tensors) -> a normalised batch."""
    if isinstance(images, (list, tuple)):
        batch = list(images)
    else:
        batch = [images]
    if not batch:
        raise VisionConfigError("no images to preprocess")
    out_h, out_w = cfg.size
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    fill = tuple(int(round(m * 255)) for m in cfg.mean)
    pixels, transforms, sizes = [], [], []
    for image in batch:
        pil = _to_pil(image)
        w, h = pil.size
        (rw, rh), (ox, oy), sx, sy = _resize_plan(w, h, cfg)
        resized = pil.resize((rw, rh), _RESAMPLE[cfg.resample]) if (rw, rh) != (w, h) else pil
        if cfg.mode == "crop":
            canvas = np.asarray(resized)[-oy:-oy + out_h, -ox:-ox + out_w]
        else:
            canvas_img = Image.new("RGB", (out_w, out_h), fill)
            canvas_img.paste(resized, (ox, oy))
            canvas = np.asarray(canvas_img)
        arr = (canvas.astype(np.float32) * np.float32(1 / 255) - mean) / std
        if cfg.mode == "pad":
            # exact zeros on the padding, whatever the rounding of the fill colour
            arr[: oy] = 0
            arr[oy + rh:] = 0
            arr[:, : ox] = 0
            arr[:, ox + rw:] = 0
        pixels.append(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))))
        transforms.append((sx, sy, float(ox), float(oy)))
        sizes.append((h, w))
    return VisionInputs(torch.stack(pixels), torch.tensor(transforms, dtype=torch.float64),
                        torch.tensor(sizes, dtype=torch.int64))


def layout_images(sizes: Sequence[tuple[int, int]], cfg: PreprocessConfig) -> VisionInputs:
    """The coordinate maps of ``preprocess_images`` for images of these (height, width), without the pixels
    (``pixel_values`` is empty): enough to place faces on the grid when the tower's features are cached."""
    transforms = []
    for h, w in sizes:
        _, (ox, oy), sx, sy = _resize_plan(int(w), int(h), cfg)
        transforms.append((sx, sy, float(ox), float(oy)))
    return VisionInputs(torch.zeros(len(sizes), 0), torch.tensor(transforms, dtype=torch.float64),
                        torch.tensor([tuple(map(int, hw)) for hw in sizes], dtype=torch.int64).reshape(-1, 2))


def grid_centers(grid: tuple[int, int], stride: float) -> torch.Tensor:
    """(H'*W', 2) centres (x, y) of the feature cells in model-input pixels, row-major like ``tokens``."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride], dim=-1)


class VisionTower(nn.Module):
    """Base class. Subclasses set ``hidden_size``, ``stride`` and ``preprocess_config`` and implement
    ``_forward(pixel_values) -> VisionOutput``."""

    hidden_size: int
    stride: int
    preprocess_config: PreprocessConfig

    def __init__(self, frozen: bool = True) -> None:
        super().__init__()
        self.frozen = frozen

    def freeze(self, frozen: bool = True) -> "VisionTower":
        """Frozen: no parameter trains and the module stays in eval mode (BatchNorm statistics fixed)."""
        self.frozen = frozen
        for p in self.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> "VisionTower":
        super().train(mode and not getattr(self, "frozen", False))
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images: TowerImage | Sequence[TowerImage]) -> VisionInputs:
        return preprocess_images(images, self.preprocess_config)

    def feature_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights the configured feature depends on (what a model folder stores of a tuned tower)."""
        return self.state_dict()

    def load_feature_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``feature_state_dict`` weights: every key it names must be there, and nothing else."""
        want = set(self.feature_state_dict())
        missing, extra = sorted(want - set(state)), sorted(set(state) - set(self.state_dict()))
        if missing or extra:
            raise VisionConfigError(f"tower weights do not match the tower: missing {missing[:3]}, unexpected "
                                    f"{extra[:3]}")
        self.load_state_dict(state, strict=False)

    def grid_size(self, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(H', W') of the feature map for an input of ``size`` (default: the preprocessing size)."""
        h, w = size or self.preprocess_config.size
        return -(-h // self.stride), -(-w // self.stride)

    def num_tokens(self, size: tuple[int, int] | None = None) -> int:
        gh, gw = self.grid_size(size)
        return gh * gw

    def forward(self, pixel_values: torch.Tensor | VisionInputs) -> VisionOutput:
        if isinstance(pixel_values, VisionInputs):
            pixel_values = pixel_values.pixel_values
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise VisionConfigError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        # a frozen tower needs no autograd graph: saves the activations' memory during training
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self._forward(pixel_values)

    def _forward(self, pixel_values: torch.Tensor) -> VisionOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def map_to_output(feature_map: torch.Tensor, **kw) -> VisionOutput:
    return VisionOutput(feature_map=feature_map, tokens=feature_map.flatten(2).transpose(1, 2), **kw)
