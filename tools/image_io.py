"""Decode any image a user may hand us into one RGB uint8 array, or fail with a clear message.

Handles EXIF rotation, grayscale, RGBA / LA (composited on white), palette, CMYK, 16-bit and float modes,
and refuses decompression bombs and oversized images before decoding their pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .schema import ImageInfo

# 40 megapixels covers every camera photo we expect; anything larger is refused before its pixels are
# decoded. Overridable for users with huge scans.
MAX_PIXELS = int(os.environ.get("FACELLM_MAX_PIXELS", 40_000_000))
MAX_BYTES = int(os.environ.get("FACELLM_MAX_IMAGE_BYTES", 50 * 1024 * 1024))

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]


class ImageLoadError(ValueError):
    """The input could not be turned into an image; the message says why, in plain words."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # H x W x 3, uint8, C-contiguous
    info: ImageInfo

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: stretch the actual range into 8 bits rather than clip to 255.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        gray = np.nan_to_num(arr).round().astype(np.uint8)
        return np.ascontiguousarray(np.stack([gray] * 3, axis=-1))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"the image is empty ({width}x{height} pixels)")
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            f"the image is too large: {width}x{height} = {width * height / 1e6:.0f} megapixels, "
            f"the limit is {MAX_PIXELS / 1e6:.0f} (set FACELLM_MAX_PIXELS to raise it); "
            "refusing to decode a possible decompression bomb"
        )


def _open_pil(data: bytes, name: str) -> Image.Image:
    if len(data) == 0:
        raise ImageLoadError(f"{name} is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageLoadError(f"{name} is {len(data) / 2**20:.0f} MiB; the limit is {MAX_BYTES / 2**20:.0f} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(*img.size)
            img.load()  # decode now, so truncated files fail here and not later
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"{name} was refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(f"{name} is corrupt or truncated: {e}") from None
    return img


def load_image(source: ImageInput, *, name: str | None = None) -> LoadedImage:
    """Load a path, raw bytes, a PIL image or an ndarray as RGB uint8 (EXIF rotation applied)."""
    path: str | None = None
    fmt: str | None = None
    orientation = 1
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        path = str(p)
        name = name or p.name
        if not p.exists():
            raise ImageLoadError(f"no such file: {p}")
        if not p.is_file():
            raise ImageLoadError(f"not a file: {p}")
        if p.stat().st_size > MAX_BYTES:
            raise ImageLoadError(f"{name} is {p.stat().st_size / 2**20:.0f} MiB; the limit is {MAX_BYTES / 2**20:.0f} MiB")
        source = p.read_bytes()
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        img = _open_pil(data, name or "the image")
        sha = hashlib.sha256(data).hexdigest()
        fmt = img.format
    elif isinstance(source, Image.Image):
        img = source
        _check_size(*img.size)
        sha = None
        fmt = img.format
    elif isinstance(source, np.ndarray):
        return _from_array(source, name=name)
    else:
        raise ImageLoadError(
            f"expected a file path, bytes, a PIL image or a numpy array, got {type(source).__name__}"
        )
    mode = img.mode
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # broken EXIF must not lose the picture
        orientation = 1
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:
        pass
    rgb = _to_rgb_array(img)
    if sha is None:
        sha = hashlib.sha256(rgb.tobytes()).hexdigest()
    info = ImageInfo(
        width=rgb.shape[1], height=rgb.shape[0], sha256=sha, path=path, format=fmt, mode=mode,
        exif_orientation=orientation,
    )
    return LoadedImage(rgb=rgb, info=info)


def _from_array(arr: np.ndarray, *, name: str | None) -> LoadedImage:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageLoadError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {arr.shape}")
    _check_size(arr.shape[1], arr.shape[0])
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise ImageLoadError("the image array contains NaN or infinite values")
        hi = a.max() if a.size else 0
        a = a * 255.0 if hi <= 1.0 else (a / 65535.0 * 255.0 if hi > 255 else a)
        arr = np.clip(a.round(), 0, 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    rgb = np.ascontiguousarray(arr)
    info = ImageInfo(
        width=rgb.shape[1], height=rgb.shape[0], sha256=hashlib.sha256(rgb.tobytes()).hexdigest(),
        path=None, format=None, mode=mode,
    )
    return LoadedImage(rgb=rgb, info=info)


def as_loaded(image: ImageInput | LoadedImage) -> LoadedImage:
    """Accept either a LoadedImage (decoded once, shared by the tools) or anything load_image takes."""
    return image if isinstance(image, LoadedImage) else load_image(image)
