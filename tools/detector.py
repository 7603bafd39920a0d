"""Face detection behind one interface, with pluggable backends.

``detect(image)`` returns every face as a ``Detection`` (box, score, 5 key points), sorted left to right,
top to bottom. Backends: ``mediapipe`` (default: BlazeFace short + full range through LiteRT, with an
up-scaled tiling pass for small faces), ``dlib-hog``, ``dlib-cnn`` and ``mtcnn``.
"""

from __future__ import annotations

import importlib
import threading
from typing import Protocol

import numpy as np

from .image_io import ImageInput, LoadedImage, as_loaded
from .schema import Detection, sort_left_to_right


class DetectorBackend(Protocol):
    name: str

    def detect(self, rgb: np.ndarray, min_score: float) -> list[Detection]:
        """All faces in an RGB uint8 image, in any order, boxes in that image's pixels."""
        ...


# backend name -> "module:Class" inside this package; imported lazily so that using one backend never
# loads the others' models.
BACKENDS: dict[str, str] = {
    "mediapipe": "mp_detector:MediaPipeDetector",
    "dlib-hog": "dlib_backend:DlibHOGDetector",
    "dlib-cnn": "dlib_backend:DlibCNNDetector",
    "mtcnn": "mtcnn:MTCNNDetector",
}
DEFAULT_BACKEND = "mediapipe"
DEFAULT_MIN_SCORE = {"mediapipe": 0.5, "dlib-hog": 0.0, "dlib-cnn": 0.3, "mtcnn": 0.9}

_instances: dict[str, DetectorBackend] = {}
_lock = threading.Lock()


def get_backend(name: str = DEFAULT_BACKEND) -> DetectorBackend:
    """A shared, lazily built instance of a detector backend."""
    if name not in BACKENDS:
        raise ValueError(f"unknown detector backend {name!r}; choose one of {sorted(BACKENDS)}")
    with _lock:
        if name not in _instances:
            module_name, cls_name = BACKENDS[name].split(":")
            module = importlib.import_module(f"{__package__}.{module_name}")
            _instances[name] = getattr(module, cls_name)()
        return _instances[name]


def detect(
    image: ImageInput | LoadedImage,
    backend: str = DEFAULT_BACKEND,
    min_score: float | None = None,
) -> list[Detection]:
    """Detect faces; sorted left to right, top to bottom (index i is face id i + 1)."""
    img = as_loaded(image)
    be = get_backend(backend)
    threshold = DEFAULT_MIN_SCORE[backend] if min_score is None else min_score
    found = be.detect(img.rgb, threshold)
    order = sort_left_to_right([d.box for d in found])
    return [found[i] for i in order]
