"""Checks shared by the per-face tools (attributes, expression, pose, cues, quality).

Bad inputs raise ``FaceInputError`` (a ``ValueError``) with a plain message instead of failing deep inside
OpenCV, dlib or a model runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .image_io import LoadedImage
from .schema import Box, Landmarks

# Points each scheme must have (mesh478 may come as 468 points when the iris refinement did not run).
SCHEME_SIZES = {"five": (5,), "ibug68": (68,), "mesh478": (478, 468)}


class FaceInputError(ValueError):
    """A face tool was given an unusable image, box or landmark set."""


def as_rgb(image: np.ndarray | LoadedImage) -> np.ndarray:
    """The H x W x 3 uint8 array of an RGB image (a ``LoadedImage`` is unwrapped)."""
    rgb = image.rgb if isinstance(image, LoadedImage) else image
    if not isinstance(rgb, np.ndarray):
        raise FaceInputError(f"expected an RGB image as a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise FaceInputError(
            f"expected an H x W x 3 uint8 RGB array, got shape {rgb.shape} and dtype {rgb.dtype}; "
            "decode images with facellm.tools.load_image first"
        )
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise FaceInputError(f"the image is too small ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
    return rgb


def as_box(box: Box | Sequence[float], width: int, height: int) -> Box:
    """A finite, non-empty face box that overlaps the image (``[x1, y1, x2, y2]`` also accepted)."""
    if not isinstance(box, Box):
        try:
            x1, y1, x2, y2 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise FaceInputError(f"a face box must be a Box or four numbers x1, y1, x2, y2; got {box!r}") from None
        box = Box(x1=x1, y1=y1, x2=x2, y2=y2)
    values = box.as_list()
    if not all(math.isfinite(v) for v in values):
        raise FaceInputError(f"the face box has non-finite coordinates: {values}")
    if box.width < 2 or box.height < 2:
        raise FaceInputError(f"the face box is empty or smaller than 2x2 pixels: {values}")
    if box.clipped(width, height).area <= 0:
        raise FaceInputError(f"the face box {values} lies outside the {width}x{height} image")
    return box


def landmark_array(landmarks: Landmarks, schemes: Sequence[str] = ("ibug68", "mesh478")) -> np.ndarray:
    """The landmarks' points as an N x 2 float64 array (x, y), after checking scheme and count."""
    if not isinstance(landmarks, Landmarks):
        raise FaceInputError(f"expected a Landmarks object, got {type(landmarks).__name__}")
    if landmarks.scheme not in schemes:
        raise FaceInputError(f"landmark scheme {landmarks.scheme!r} is not supported here; use one of {list(schemes)}")
    n = len(landmarks.points)
    if n not in SCHEME_SIZES[landmarks.scheme]:
        raise FaceInputError(
            f"a {landmarks.scheme} landmark set needs {' or '.join(map(str, SCHEME_SIZES[landmarks.scheme]))} "
            f"points, got {n}"
        )
    try:
        pts = np.array([p[:2] for p in landmarks.points], dtype=np.float64)
    except (TypeError, ValueError):
        raise FaceInputError("landmark points must be sequences of at least two numbers") from None
    if pts.shape != (n, 2) or not np.isfinite(pts).all():
        raise FaceInputError("landmark points must be finite (x, y) pairs")
    return pts
