"""MTCNN face detector (Zhang et al. 2016) in plain PyTorch: P-Net, R-Net and O-Net in a cascade.

The weights are the original Caffe MTCNN ones as converted by facenet-pytorch (``pnet.pt``, ``rnet.pt``,
``onet.pt``; fetched by the setup step). Our modules use that state dict's names and load it strictly.
The conversion kept one quirk of the Caffe models, which were trained on transposed (column-major) images:
R-Net's and O-Net's dense layers expect the feature map flattened in (W, H, C) order.

Pipeline: an image pyramid through the fully convolutional P-Net (12 px windows, stride 2) proposes boxes;
R-Net (24 px crops) and O-Net (48 px crops) each re-score, refine and prune them; O-Net also gives five
points (image-left eye, image-right eye, nose, image-left and image-right mouth corner), which is our kpts5
order. Non-maximum suppression is done here in numpy (no torchvision). Coordinates are continuous pixel
coordinates of the input image.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .assets import asset_path
from .schema import Box, Detection, Keypoint

SOURCE = "mtcnn"
_NORM_MEAN, _NORM_SCALE = 127.5, 0.0078125  # the Caffe models' input scaling
_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")


class PNet(nn.Module):
    """Proposal net: fully convolutional; per 12x12 window (stride 2) a face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)[:, 1]


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    # the Caffe weights were trained on transposed images: flatten in (W, H, C) order
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_caffe(x)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops: probability, box offsets and five points."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x1..x5, y1..y5 as fractions of the crop

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_caffe(x)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)[:, 1]


def _load(net: nn.Module, key: str) -> nn.Module:
    net.load_state_dict(torch.load(asset_path(key), map_location="cpu", weights_only=True), strict=True)
    return net.eval().requires_grad_(False)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression. ``mode='min'`` divides the overlap by the smaller box's area
    (drops a box nested inside a better one, which O-Net's last stage wants). Returns kept indices."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        overlap = np.where(denom > 0, inter / np.maximum(denom, 1e-12), 0.0)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _apply_offsets(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Move each box's sides by the regressed offsets (fractions of its width / height)."""
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    return boxes[:, :4] + reg * np.concatenate([w, h, w, h], axis=1)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square about its centre (the next net's input is square)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def _crops(rgb: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Each box cut out of the image (zero outside it), resized to size x size, normalised, NCHW."""
    h, w = rgb.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for n, (x1, y1, x2, y2) in enumerate(np.round(boxes[:, :4]).astype(np.int64)):
        bw, bh = x2 - x1, y2 - y1
        if bw < 1 or bh < 1:
            continue
        patch = np.zeros((bh, bw, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = rgb[sy1:sy2, sx1:sx2]
        interp = cv2.INTER_AREA if bw > size else cv2.INTER_LINEAR
        out[n] = cv2.resize(patch, (size, size), interpolation=interp)
    t = torch.from_numpy(out).permute(0, 3, 1, 2)
    return (t - _NORM_MEAN) * _NORM_SCALE


class MTCNNDetector:
    """MTCNN with the usual settings: stage thresholds (0.6, 0.7, 0.7), pyramid factor 0.709.

    ``min_face`` (px, default 20) sets the pyramid's first scale; raise it to go faster. On big photos the
    first pyramid level is capped at ``max_pixels`` (the smallest face found grows accordingly: ~34 px on
    a 12 MP photo), which bounds P-Net's cost.
    The returned score is O-Net's face probability; ``detect``'s ``min_score`` filters on it (the registry
    default is 0.9, which drops the few weak false positives O-Net lets through at 0.7).
    """

    name = SOURCE

    def __init__(self, min_face: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, max_candidates: int = 4000, max_pixels: int = 1_500_000) -> None:
        if min_face < 12:
            raise ValueError("min_face must be at least 12 px (P-Net's window)")
        self.min_face, self.thresholds, self.factor = min_face, thresholds, factor
        self.max_pixels = max_pixels
        self.max_candidates = max_candidates
        self.pnet = _load(PNet(), "mtcnn_pnet")
        self.rnet = _load(RNet(), "mtcnn_rnet")
        self.onet = _load(ONet(), "mtcnn_onet")
        self._lock = threading.Lock()

    def _scales(self, h: int, w: int) -> list[float]:
        scale = min(12.0 / self.min_face, (self.max_pixels / float(h * w)) ** 0.5)
        scales = []
        while min(h, w) * scale >= 12:
            scales.append(scale)
            scale *= self.factor
        return scales

    def _propose(self, rgb: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: rows of (x1, y1, x2, y2, score), offsets applied, squared."""
        h, w = rgb.shape[:2]
        img = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
        found = []
        for s in self._scales(h, w):
            hs, ws = int(h * s + 1), int(w * s + 1)
            x = (F.interpolate(img, size=(hs, ws), mode="area") - _NORM_MEAN) * _NORM_SCALE
            reg, prob = self.pnet(x)
            prob, reg = prob[0].numpy(), reg[0].numpy()
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if len(ys) == 0:
                continue
            # output cell (y, x) looks at the 12x12 window at (2x, 2y) of the scaled image
            sx, sy = ws / w, hs / h
            boxes = np.stack([2 * xs / sx, 2 * ys / sy, (2 * xs + 12) / sx, (2 * ys + 12) / sy], axis=1)
            cand = np.concatenate([boxes, prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1)
            found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5))
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        cand = cand[np.argsort(-cand[:, 4])[: self.max_candidates]]
        return np.concatenate([_square(_apply_offsets(cand, cand[:, 5:9])), cand[:, 4:5]], axis=1)

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net: re-score at 24 px, keep, suppress, refine and square."""
        if len(boxes) == 0:
            return boxes
        reg, prob = self.rnet(_crops(rgb, boxes, 24))
        keep = prob.numpy() >= self.thresholds[1]
        boxes, reg, prob = boxes[keep], reg.numpy()[keep], prob.numpy()[keep]
        k = nms(boxes[:, :4], prob, 0.7)
        boxes, reg, prob = boxes[k], reg[k], prob[k]
        return np.concatenate([_square(_apply_offsets(boxes, reg)), prob[:, None]], axis=1)

    def _output(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """O-Net: final boxes (x1, y1, x2, y2, score) and (N, 5, 2) points."""
        if len(boxes) == 0:
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        reg, pts, prob = (t.numpy() for t in self.onet(_crops(rgb, boxes, 48)))
        keep = prob >= self.thresholds[2]
        boxes, reg, pts, prob = boxes[keep], reg[keep], pts[keep], prob[keep]
        w = (boxes[:, 2] - boxes[:, 0])[:, None]
        h = (boxes[:, 3] - boxes[:, 1])[:, None]
        points = np.stack([boxes[:, 0:1] + w * pts[:, 0:5], boxes[:, 1:2] + h * pts[:, 5:10]], axis=2)
        final = np.concatenate([_apply_offsets(boxes, reg), prob[:, None]], axis=1)
        k = nms(final[:, :4], prob, 0.7, mode="min")
        return final[k], points[k]

    def detect_arrays(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw output: (N, 5) boxes with O-Net scores and (N, 5, 2) points, best first."""
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("expected an RGB uint8 image of shape HxWx3; use image_io.load_image")
        rgb = np.ascontiguousarray(rgb)
        with self._lock, torch.inference_mode():
            boxes = self._propose(rgb)
            boxes = self._refine(rgb, boxes)
            final, points = self._output(rgb, boxes)
        order = np.argsort(-final[:, 4], kind="stable")
        return final[order], points[order]

    def detect(self, rgb: np.ndarray, min_score: float = 0.9) -> list[Detection]:
        final, points = self.detect_arrays(rgb)
        h, w = rgb.shape[:2]
        out = []
        for (x1, y1, x2, y2, score), pts in zip(final, points):
            if score < min_score or x2 <= x1 or y2 <= y1:
                continue
            kpts = [(float(x), float(y)) for x, y in pts]
            out.append(Detection(
                box=Box(x1=float(x1), y1=float(y1), x2=float(x2), y2=float(y2)).clipped(w, h),
                score=float(min(max(score, 0.0), 1.0)),
                kpts5=kpts,
                keypoints=[Keypoint(name=n, x=x, y=y) for n, (x, y) in zip(_NAMES, kpts)],
                source=self.name,
            ))
        return out
