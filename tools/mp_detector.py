"""MediaPipe BlazeFace face detection run through LiteRT, with the decoding MediaPipe's graphs used to do.

Two models from the mediapipe 0.10.14 wheel:

* short range (128x128 input, 896 anchors): close-up faces that fill a good part of the frame;
* full range sparse (192x192 input, 2304 anchors): faces from large down to ~15 px in its input.

Each raw output row is 16 numbers per anchor (box centre offset, width, height, then 6 key points x, y)
plus one score logit; we rebuild MediaPipe's SSD anchors (``SsdAnchorsCalculator`` options of each
model), decode, apply the sigmoid, and merge overlaps with MediaPipe's *weighted* non-max suppression
(a cluster's box and points are the score-weighted mean of its members, its score the best member's).

Passes over one image (candidates from all of them merged by the same weighted NMS, in original pixels):

1. both models on the whole image, letterboxed (aspect kept, zero padding) -- every image;
2. the full-range model on overlapping square tiles, at finer and finer scales until faces of
   ``min_face`` pixels (box width) reach the model's ~16 px limit. Levels are spaced by at most 3x and
   tiles overlap by the next coarser level's reach (at most a quarter), so every face is whole inside some
   tile of a level that sees it at a usable size; detections touching an inner tile edge are dropped (the
   neighbouring tile has them whole). This pass is what finds 20-40 px faces in a 1920x1080 photo; its
   cost grows with the image area over ``min_face`` squared (``tile_plan``: 7 model calls for 640x480,
   52 for 1920x1080 at the default 24 px).

Verification. BlazeFace alone fires on textures (star fields, coins, logos, a surgical mask: up to 0.77
on skimage's and insightface's non-face images) and misses small faces at MediaPipe's 0.5 cut (20-30 px
faces often score 0.2-0.5). So candidates from a low floor (0.2) go through the face-mesh model's
face-presence flag, as MediaPipe's tracking uses it (see ``verify_candidates``), and a detection's score is
the mean of its BlazeFace score and its presence probability: "both models agree". Duplicates that
weighted NMS leaves (shifted boxes, boxes twice a face's size) are removed by where their meshes lie.

Rotation. BlazeFace is not rotation invariant (it tolerates roughly +-45 degrees of roll; upside-down
faces sometimes pass as upright ones with the eyes where the mouth is). When no upright face is confident
(score < 0.85) the whole-image passes also look at the image turned by 90, 180 and 270 degrees (cheap: the
letterboxed inputs are turned, ~3 x 3 ms plus checks); when that, or the eye lines of the faces found,
says the photo is turned, every pass (tiles too) runs the right way up and the reading with more face
evidence wins. Upright photos with a confident face pay nothing for this; turned photos pay about twice.
Key points: MediaPipe's six are, from the subject's point of view, right eye, left eye, nose tip, mouth
centre, right ear tragion, left ear tragion (the subject's right eye is on the image left; checked on
the astronaut). ``kpts5`` needs mouth corners, which BlazeFace does not give: they are estimated as the
mouth centre -/+ 0.415 x the eye-to-eye vector (the ratio of mouth width to eye distance in the usual
5-point alignment template), which follows head roll. ``analyze`` replaces them with mesh points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .assets import asset_path
from .litert_runtime import LiteModel, load_model
from .schema import Box, Detection, Keypoint

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
# Mouth half-width over eye distance in the common 5-point template (ArcFace 112x112: 29.2 / 35.2 / 2).
MOUTH_HALF_WIDTH = 0.415


@dataclass(frozen=True)
class SsdAnchorOptions:
    """The part of MediaPipe's SsdAnchorsCalculatorOptions that these models use (fixed_anchor_size:
    every anchor is 1 x 1, so only the centres and the anchors per cell matter)."""

    input_size: int
    strides: tuple[int, ...]
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0  # > 0 adds one more anchor per layer
    anchor_offset: float = 0.5


@dataclass(frozen=True)
class ModelSpec:
    asset: str
    name: str
    anchors: SsdAnchorOptions
    # without verification, candidates are kept from this floor (below the caller's min_score) so that
    # weighted NMS can average them, as MediaPipe does
    score_floor: float = 0.3


# face_detection_short_range.pbtxt: num_layers 4, strides 8, 16, 16, 16 -> 16x16x2 + 8x8x6 = 896
SHORT_RANGE = ModelSpec("face_detection_short_range", "short-range", SsdAnchorOptions(128, (8, 16, 16, 16)))
# face_detection_full_range.pbtxt: num_layers 1, stride 4, interpolated_scale_aspect_ratio 0 -> 48x48x1
FULL_RANGE = ModelSpec(
    "face_detection_full_range", "full-range", SsdAnchorOptions(192, (4,), interpolated_scale_aspect_ratio=0.0)
)

NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold for face detection
TILE_OVERLAP = 0.25  # share of a tile's side shared with its neighbour
LEVEL_RATIO = 3.0  # largest step between tile sizes of consecutive levels (see the module docstring)
MODEL_REACH = 16.0  # smallest face box (px of model input) the full-range model scores >= 0.5 (measured)
CANDIDATE_FLOOR = 0.2  # BlazeFace score from which a candidate goes to the presence check
MAX_CANDIDATES = 200  # presence checks per image at most (~1.3 ms each), best BlazeFace scores first
SURE_SCORE, SURE_PRESENCE = 0.6, 0.99  # above both, the second (refined-ROI) presence check is skipped
LOOK_FLOOR = 0.4  # the cheap look at turned images verifies only candidates this sure (it wants clear faces)
CONFIDENT = 0.85  # a face this sure (mean of BlazeFace and mesh presence) settles the photo's orientation...
UPRIGHT_ROLL = 30.0  # ...when its eye line is within this many degrees of level
DUPLICATE_IOU = 0.2  # mesh extents overlapping more than this are one face
NESTED = 0.6  # a box sharing this much of the smaller box's area with a better one is a duplicate
PIECE_OVERLAP, PIECE_RATIO = 0.4, 3.0  # ... or this much, when the other box is this many times larger
PRESENCE_THRESHOLD = 0.5  # MediaPipe's face-presence threshold for its mesh model


def ssd_anchors(opts: SsdAnchorOptions) -> np.ndarray:
    """Anchor centres (N, 2) in [0, 1], in the order the model's outputs use (row, column, anchor)."""
    centres = []
    i = 0
    strides = opts.strides
    while i < len(strides):
        # consecutive layers with the same stride share one feature map (MediaPipe merges them)
        j = i
        per_cell = 0
        while j < len(strides) and strides[j] == strides[i]:
            per_cell += len(opts.aspect_ratios) + (1 if opts.interpolated_scale_aspect_ratio > 0 else 0)
            j += 1
        fm = math.ceil(opts.input_size / strides[i])
        ys, xs = np.mgrid[0:fm, 0:fm]
        c = np.stack([(xs + opts.anchor_offset) / fm, (ys + opts.anchor_offset) / fm], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(c, per_cell, axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(centres).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, -100.0, 100.0)  # MediaPipe's score_clipping_thresh
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


@dataclass
class RawDetections:
    """Candidates in some pixel frame: boxes (N, 4) x1 y1 x2 y2, points (N, 6, 2), scores (N,), model."""

    boxes: np.ndarray
    points: np.ndarray
    scores: np.ndarray
    models: np.ndarray  # (N,) index into (FULL_RANGE, SHORT_RANGE)
    roll: np.ndarray | None = None  # (N,) eye-line angle in degrees as the mesh saw it, once verified

    @staticmethod
    def empty() -> RawDetections:
        return RawDetections(np.zeros((0, 4), np.float32), np.zeros((0, 6, 2), np.float32),
                             np.zeros((0,), np.float32), np.zeros((0,), np.int8))

    @staticmethod
    def concat(parts: list[RawDetections]) -> RawDetections:
        parts = [p for p in parts if len(p.scores)]
        if not parts:
            return RawDetections.empty()
        return RawDetections(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                               ("boxes", "points", "scores", "models")))

    def take(self, idx: np.ndarray) -> RawDetections:
        roll = None if self.roll is None else self.roll[idx]
        return RawDetections(self.boxes[idx], self.points[idx], self.scores[idx], self.models[idx], roll)


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(det: RawDetections, iou_threshold: float = NMS_IOU) -> RawDetections:
    """MediaPipe's weighted NMS: take the best remaining candidate, average it with every candidate that
    overlaps it by more than ``iou_threshold`` (weights = scores), keep the best score; repeat."""
    order = np.argsort(-det.scores, kind="stable")
    remaining = order
    boxes, points, scores, models = [], [], [], []
    while len(remaining):
        top = remaining[0]
        ious = _iou_one_to_many(det.boxes[top], det.boxes[remaining])
        cluster = remaining[ious > iou_threshold]
        if len(cluster) == 0:  # degenerate (zero-area) box: keep it alone
            cluster = remaining[:1]
        w = det.scores[cluster][:, None]
        boxes.append((det.boxes[cluster] * w).sum(0) / w.sum())
        points.append((det.points[cluster] * w[:, :, None]).sum(0) / w.sum())
        scores.append(det.scores[top])
        models.append(det.models[top])
        remaining = remaining[~np.isin(remaining, cluster)]
    if not scores:
        return RawDetections.empty()
    return RawDetections(np.array(boxes, np.float32), np.array(points, np.float32),
                         np.array(scores, np.float32), np.array(models, np.int8))


@dataclass(frozen=True)
class Tile:
    """A square window of side ``size`` at (x0, y0) in the image (it may reach past the image edge,
    where it is zero padded), and which of its sides are inside the image (not at its border)."""

    x0: float
    y0: float
    size: float
    inner_edges: tuple[bool, bool, bool, bool]  # left, top, right, bottom


def _starts(length: int, size: float, overlap: float) -> list[float]:
    if size >= length:
        return [(length - size) / 2]  # centred, padded on both sides (the letterbox)
    n = math.ceil((length - overlap) / (size - overlap) - 1e-6)
    n = max(n, 2)
    return [i * (length - size) / (n - 1) for i in range(n)]


def tile_plan(width: int, height: int, min_face: float | None, input_size: int = 192) -> list[list[Tile]]:
    """Tile levels for an image: level 0 is the whole image (letterboxed); each further level uses
    square tiles small enough that faces of ``min_face`` px are >= MODEL_REACH px in the model input."""
    long_side = max(width, height)
    whole = Tile((width - long_side) / 2, (height - long_side) / 2, long_side, (False,) * 4)
    levels = [[whole]]
    if not min_face:
        return levels
    fine = max(min_face * input_size / MODEL_REACH, float(input_size))  # never up-sample beyond 1:1 model input
    if fine >= long_side / 1.2:
        return levels
    sizes = [fine]
    while sizes[-1] * LEVEL_RATIO < long_side / 1.2:
        sizes.append(sizes[-1] * LEVEL_RATIO)
    for k, size in enumerate(reversed(sizes)):
        # a tile level must hold whole every face too small for the next coarser level (reach = its
        # MODEL_REACH in image pixels), so the overlap is that reach plus a margin, and at most a quarter
        coarser = sizes[len(sizes) - k] if k > 0 else long_side
        ov = min(TILE_OVERLAP * size, 1.25 * MODEL_REACH * coarser / input_size)
        tiles = []
        xs, ys = _starts(width, size, ov), _starts(height, size, ov)
        for y0 in ys:
            for x0 in xs:
                inner = (x0 > 0.5, y0 > 0.5, x0 + size < width - 0.5, y0 + size < height - 0.5)
                tiles.append(Tile(x0, y0, size, inner))
        levels.append(tiles)
    return levels


def _crop_to_input(rgb: np.ndarray, tile: Tile, n: int) -> np.ndarray:
    """The tile resized to n x n, float32 in [-1, 1] (MediaPipe's detector input range)."""
    h, w = rgb.shape[:2]
    s = n / tile.size
    if s >= 1:
        # affine map tile -> input; outside the image warpAffine pads with zeros, as MediaPipe's letterbox
        m = np.array([[s, 0, -tile.x0 * s], [0, s, -tile.y0 * s]], np.float64)
        out = cv2.warpAffine(rgb, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    else:
        # warpAffine has no area filter: shrink the covered part of the image first, then place it
        x1, y1 = max(0, int(math.floor(tile.x0))), max(0, int(math.floor(tile.y0)))
        x2, y2 = min(w, int(math.ceil(tile.x0 + tile.size))), min(h, int(math.ceil(tile.y0 + tile.size)))
        pw, ph = max(1, round((x2 - x1) * s)), max(1, round((y2 - y1) * s))
        small = cv2.resize(rgb[y1:y2, x1:x2], (pw, ph), interpolation=cv2.INTER_AREA)
        sx, sy = pw / (x2 - x1), ph / (y2 - y1)
        m = np.array([[s / sx, 0, (x1 - tile.x0) * s], [0, s / sy, (y1 - tile.y0) * s]], np.float64)
        out = cv2.warpAffine(small, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out.astype(np.float32) * (2.0 / 255.0) - 1.0


class _Model:
    def __init__(self, spec: ModelSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.model: LiteModel = load_model(asset_path(spec.asset))
        self.size = spec.anchors.input_size
        self.anchors = ssd_anchors(spec.anchors)
        # regressors are the (1, N, 16) output, score logits the (1, N, 1) one (names differ per file)
        out = self.model.run(np.zeros((1, self.size, self.size, 3), np.float32))
        by_width = {v.shape[-1]: k for k, v in out.items()}
        if set(by_width) != {16, 1}:
            raise RuntimeError(f"{spec.asset}: unexpected outputs {[v.shape for v in out.values()]}")
        self._reg, self._cls = by_width[16], by_width[1]
        if out[self._reg].shape[1] != len(self.anchors):
            raise RuntimeError(f"{spec.asset}: {len(self.anchors)} anchors but {out[self._reg].shape[1]} outputs")

    def run(self, rgb: np.ndarray, tile: Tile, floor: float) -> RawDetections:
        return self.infer(_crop_to_input(rgb, tile, self.size), tile, floor)

    def infer(self, x: np.ndarray, tile: Tile, floor: float, turn: int = 0) -> RawDetections:
        """Candidates from a prepared input ``x`` of ``tile``, optionally looked at turned by
        ``turn`` x 90 degrees (turning the square input equals letterboxing the turned image)."""
        if turn:
            x = np.ascontiguousarray(np.rot90(x, turn))
        out = self.model.run(x[None])
        reg, logits = out[self._reg][0], out[self._cls][0, :, 0]
        scores = _sigmoid(logits)
        keep = np.nonzero(scores >= floor)[0]
        if len(keep) == 0:
            return RawDetections.empty()
        reg, scores, anchors = reg[keep] / self.size, scores[keep], self.anchors[keep]
        cx, cy = reg[:, 0] + anchors[:, 0], reg[:, 1] + anchors[:, 1]
        bw, bh = reg[:, 2], reg[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        pts = reg[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        det = RawDetections(boxes.astype(np.float32), pts.astype(np.float32), scores.astype(np.float32),
                            np.full(len(scores), self.index, np.int8))
        if turn:
            det = _rotate_back(det, turn, 1.0, 1.0)  # back to the unturned unit square
        # normalised tile coordinates -> image pixels
        det.boxes = det.boxes * tile.size + np.array([tile.x0, tile.y0, tile.x0, tile.y0], np.float32)
        det.points = det.points * tile.size + np.array([tile.x0, tile.y0], np.float32)
        return det


def _drop_cut(det: RawDetections, tile: Tile, width: int, height: int) -> RawDetections:
    """Drop detections that touch an inner tile edge: a neighbouring tile holds those faces whole."""
    if not any(tile.inner_edges) or not len(det.scores):
        return det
    margin = 0.02 * tile.size
    b = det.boxes
    cut = np.zeros(len(b), bool)
    left, top, right, bottom = tile.inner_edges
    if left:
        cut |= b[:, 0] < tile.x0 + margin
    if top:
        cut |= b[:, 1] < tile.y0 + margin
    if right:
        cut |= b[:, 2] > tile.x0 + tile.size - margin
    if bottom:
        cut |= b[:, 3] > tile.y0 + tile.size - margin
    return det.take(np.nonzero(~cut)[0])


def _overlap(e: np.ndarray, i: int, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intersection over the smaller box, IoU) of box ``i`` with boxes ``k`` of ``e`` (x1, y1, x2, y2)."""
    ix = np.clip(np.minimum(e[i, 2], e[k, 2]) - np.maximum(e[i, 0], e[k, 0]), 0, None)
    iy = np.clip(np.minimum(e[i, 3], e[k, 3]) - np.maximum(e[i, 1], e[k, 1]), 0, None)
    inter = ix * iy
    areas = np.maximum((e[:, 2] - e[:, 0]) * (e[:, 3] - e[:, 1]), 1e-9)
    return inter / np.minimum(areas[i], areas[k]), inter / (areas[i] + areas[k] - inter)


def _inside(points: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Whether all ``points`` (P, 2) lie inside each box of ``e`` (K, 4)."""
    x, y = points[:, 0][None], points[:, 1][None]
    return ((x >= e[:, 0:1]) & (x <= e[:, 2:3]) & (y >= e[:, 1:2]) & (y <= e[:, 3:4])).all(axis=1)


def _distinct(det: RawDetections, extent: np.ndarray) -> np.ndarray:
    """Indices of the candidates that are distinct faces (best score wins), in input order.

    Weighted NMS (IoU > 0.3) leaves duplicates: a box shifted by half a face, a box of another pass (tiles,
    the other model) at another scale around the same face (IoU ~0.25 with it), and the mesh model, tolerant
    of a shifted crop, still finds the face in it. A candidate is the same face as a better one when

    * their faces' extents (the meshes' when verified) overlap by IoU > 0.2, their centres are closer than
      0.6 x the smaller extent's size, or one mostly lies inside the other;
    * or their detector boxes mostly nest (over 0.6 of the smaller box inside the other): a box at
      another scale around one face, whatever its mesh did; or a box a third of the other's size or less
      lies 40 % or more on it (a cheek or an ear found as a tiny face at the edge of a big one);
    * or its own eyes and nose tip all fall inside the better face's extent (key points agree on the face).

    Faces do not nest in photos, and two faces side by side overlap far less than any of these, so a
    merge only ever removes a detection: fusing passes cannot add a face."""
    order = np.argsort(-det.scores, kind="stable")
    keep: list[int] = []
    e = extent
    b = det.boxes.astype(np.float64)
    centres = (e[:, :2] + e[:, 2:]) / 2
    sizes = np.maximum(e[:, 2] - e[:, 0], e[:, 3] - e[:, 1])
    sizes_b = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    for i in order:
        if keep:
            k = np.array(keep)
            nested, iou = _overlap(e, i, k)
            boxes_nested, _ = _overlap(b, i, k)
            close = np.linalg.norm(centres[k] - centres[i], axis=1) < 0.6 * np.minimum(sizes[i], sizes[k])
            same_points = _inside(det.points[i, :3].astype(np.float64), e[k])
            # a box a third of a face's size or less, mostly on that face's box: a piece of that face (a cheek,
            # an ear) seen at another scale, not a face behind it
            ratio = np.maximum(sizes_b[i], sizes_b[k]) / np.maximum(np.minimum(sizes_b[i], sizes_b[k]), 1e-9)
            piece = (boxes_nested > PIECE_OVERLAP) & (ratio >= PIECE_RATIO)
            if np.any((nested > NESTED) | (iou > DUPLICATE_IOU) | close | (boxes_nested > NESTED) | piece | same_points):
                continue
        keep.append(int(i))
    return np.array(sorted(keep), dtype=np.int64)


def _turn_to_level(det: RawDetections) -> int | None:
    """The k (np.rot90 turns) that makes most detected faces upright, or None if they mostly are.

    Turning an image by k x 90 degrees counter-clockwise lowers every eye-line angle by k x 90."""
    if not len(det.scores):
        return None
    if det.roll is not None:
        # the mesh's eye line: BlazeFace's own eye points on a sideways face can be 45 degrees off
        angle = det.roll
    else:
        d = det.points[:, 1] - det.points[:, 0]
        angle = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    k = np.round(angle / 90.0).astype(int) % 4
    votes = np.bincount(k, weights=det.scores, minlength=4)
    best = int(np.argmax(votes))
    return best if best != 0 and votes[best] > votes[0] else None


def _rotate_back(det: RawDetections, k: int, width: int, height: int) -> RawDetections:
    """Map detections found on np.rot90(image, k) back to the original image (width x height)."""
    def pts_back(p: np.ndarray) -> np.ndarray:
        x, y = p[..., 0], p[..., 1]
        if k == 1:  # rot90 ccw: original (x, y) -> (y, W - x)
            return np.stack([width - y, x], -1)
        if k == 2:
            return np.stack([width - x, height - y], -1)
        if k == 3:  # rot90 cw: (x, y) -> (H - y, x)
            return np.stack([y, height - x], -1)
        return p

    corners = pts_back(det.boxes.reshape(-1, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    return RawDetections(boxes.astype(np.float32), pts_back(det.points).astype(np.float32), det.scores, det.models)


class MediaPipeDetector:
    """The default detector backend: BlazeFace full + short range, tiled for small faces, rotation fallback.

    ``min_face``: smallest face box width (px) the tiled pass should reach; None turns tiling off
    (whole-image passes only: then faces below ~8 % of the image's long side are missed).
    ``rotations``: "auto" (look at the turned image when no upright face is confident), "always" (look
    every time) or "never".
    ``verify``: check candidates with the face-mesh presence flag (the score is then the mean of
    BlazeFace's and the mesh's); False gives plain BlazeFace scores and MediaPipe's behaviour.
    Thread-safe: one instance may serve several threads (state lives in the call).
    """

    name = "mediapipe"

    def __init__(self, min_face: float | None = 24.0, rotations: str = "auto", verify: bool = True) -> None:
        if rotations not in ("auto", "always", "never"):
            raise ValueError(f"rotations must be 'auto', 'always' or 'never', got {rotations!r}")
        if min_face is not None and not (min_face > 0 and math.isfinite(min_face)):
            raise ValueError(f"min_face must be a positive number of pixels or None, got {min_face!r}")
        self.min_face = min_face
        self.rotations = rotations
        self._full = _Model(FULL_RANGE, 0)
        self._short = _Model(SHORT_RANGE, 1)
        self._models = (self._full, self._short)
        self.verify = verify
        self._checker = None
        if verify:
            from .mesh import FaceMesher

            self._checker = FaceMesher(refine=False, irises=False)

    def _whole(self, rgb: np.ndarray, floor: float, cache: dict, turn: int = 0) -> RawDetections:
        """Both models on the whole image, letterboxed; the inputs are made once per image (``cache``,
        local to one detect call) and turned for the rotated looks."""
        h, w = rgb.shape[:2]
        tile = tile_plan(w, h, None)[0][0]
        if id(rgb) not in cache:
            cache[id(rgb)] = [_crop_to_input(rgb, tile, m.size) for m in self._models]
        return RawDetections.concat([m.infer(x, tile, floor, turn) for m, x in zip(self._models, cache[id(rgb)])])

    def _upright(self, rgb: np.ndarray, floor: float, tiles: bool, cache: dict) -> RawDetections:
        h, w = rgb.shape[:2]
        levels = tile_plan(w, h, self.min_face if tiles else None)
        parts = [self._whole(rgb, floor, cache)]
        for level in levels[1:]:
            for tile in level:
                parts.append(_drop_cut(self._full.run(rgb, tile, floor), tile, w, h))
        return RawDetections.concat(parts)

    def _score(self, rgb: np.ndarray, cand: RawDetections, min_score: float, floor: float = 0.0) -> RawDetections:
        """Final scores (verified when enabled), duplicates removed, kept if >= min_score; candidates
        below ``floor`` are dropped before the (costly) verification."""
        cand = cand.take(np.nonzero(cand.scores >= floor)[0])
        if not len(cand.scores):
            return cand
        extent = cand.boxes.astype(np.float64)  # where each face is: BlazeFace's box, or the mesh's extent
        if self._checker is not None:
            cand = cand.take(np.argsort(-cand.scores, kind="stable")[:MAX_CANDIDATES])
            presence, extent, roll = self.verify_candidates(rgb, cand)
            cand.scores = (0.5 * (cand.scores + presence)).astype(np.float32)
            cand.roll = roll
        cand = cand.take(_distinct(cand, extent))
        return cand.take(np.nonzero(cand.scores >= min_score)[0])

    def verify_candidates(self, rgb: np.ndarray, cand: RawDetections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Face presence of each candidate, the extent (x1, y1, x2, y2) of its mesh (N, 4) and the mesh's
        eye-line angle in degrees (N,; BlazeFace's where the mesh found no face).

        MediaPipe's two-step check, as its tracking does: the face-mesh model on the detection ROI
        (1.5 x the box, eyes level), then again on the ROI rebuilt from that first mesh; presence is the
        lower of the two. BlazeFace alone fires on textures (star fields, coins, logos, a surgical mask:
        up to 0.77 on skimage's and insightface's non-face images); the first presence already rejects
        those (<= 0.1), and the second rejects faces-by-pareidolia (a rocket's nose cone: 0.79 -> 0.18)
        and boxes twice a face's size that merely contain one. Real faces, down to 20 px, scored >= 0.9.
        The second look is skipped for sure hits (BlazeFace >= 0.6 and first presence >= 0.99).
        """
        from .mesh import Roi, roi_from_mesh

        rois = []
        for b, p in zip(cand.boxes, cand.points):
            angle = math.atan2(float(p[1, 1] - p[0, 1]), float(p[1, 0] - p[0, 0]))
            size = 1.5 * float(max(b[2] - b[0], b[3] - b[1], 1.0))
            rois.append(Roi(float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2, size, angle))
        meshes, first = self._checker.run_rois(rgb, rois)
        presence = np.zeros(len(rois))
        extent = cand.boxes.astype(np.float64).copy()
        d = cand.points[:, 1] - cand.points[:, 0]
        roll = np.degrees(np.arctan2(d[:, 1], d[:, 0])).astype(np.float64)

        def use(i: int, m: np.ndarray) -> None:
            extent[i] = [m[:, 0].min(), m[:, 1].min(), m[:, 0].max(), m[:, 1].max()]
            roll[i] = math.degrees(roi_from_mesh(m).angle)

        for i, m in enumerate(meshes):
            if first[i] >= PRESENCE_THRESHOLD:
                presence[i] = first[i]
                use(i, m)
        # a sure BlazeFace hit that the mesh confirms at once needs no second look
        again = np.nonzero((first >= PRESENCE_THRESHOLD) & ((first < SURE_PRESENCE) | (cand.scores < SURE_SCORE)))[0]
        if len(again):
            meshes2, second = self._checker.run_rois(rgb, [roi_from_mesh(meshes[i]) for i in again])
            for j, i in enumerate(again):
                presence[i] = min(first[i], second[j])
                use(i, meshes2[j])
        return presence, extent, roll

    def _turned(self, rgb: np.ndarray, k: int, floor: float, tiles: bool, cache: dict) -> RawDetections:
        """Candidates found on the image turned by k x 90 degrees (counter-clockwise), in original pixels."""
        if not tiles:
            return self._whole(rgb, floor, cache, turn=k)
        h, w = rgb.shape[:2]
        turned = np.ascontiguousarray(np.rot90(rgb, k))
        return _rotate_back(self._upright(turned, floor, True, cache), k, w, h)

    def detect_raw(self, rgb: np.ndarray, min_score: float) -> RawDetections:
        """Merged, scored detections >= min_score, in image pixels (see the class docstring)."""
        rgb = _check_rgb(rgb)
        cache: dict = {}
        # with verification, weak BlazeFace candidates are kept for the presence check to decide
        floor = CANDIDATE_FLOOR if self._checker is not None else min(min_score, FULL_RANGE.score_floor)
        found = self._score(rgb, weighted_nms(self._upright(rgb, floor, True, cache)), min_score)
        if self.rotations == "never":
            return found
        turn = _turn_to_level(found)
        by_roll = turn is not None
        # a confident face settles the orientation only if it is about upright: sideways faces in a turned
        # photo can score ~0.87 upright with a mesh roll of ~40 degrees (the mesh leans to its ROI's angle)
        upright = np.abs(found.roll) <= UPRIGHT_ROLL if found.roll is not None else np.ones(len(found.scores), bool)
        confident = bool(np.any((found.scores >= CONFIDENT) & upright))
        if turn is None and (self.rotations == "always" or not confident):
            # Cheap look (whole-image passes only) at the image turned by 90, 180 and 270 degrees.
            # Upside-down faces fool both models now and then (found "upright" with the eyes where the
            # mouth is, scores ~0.7), so weak upright results are not trusted on their own.
            best = 0.0
            for k in (1, 2, 3):
                seen = self._score(rgb, weighted_nms(self._turned(rgb, k, floor, False, cache)), min_score, LOOK_FLOOR)
                if float(seen.scores.sum()) > max(best, float(found.scores.sum())):
                    best, turn = float(seen.scores.sum()), k
        if turn is not None:
            # the photo looks turned: run every pass (small-face tiles too) the right way up, and keep
            # that reading if it finds more face evidence than the upright one (or about as much, when
            # the faces' own eye lines said the photo is turned: sideways faces can score high upright)
            turned = self._score(rgb, weighted_nms(self._turned(rgb, turn, floor, True, cache)), min_score)
            if float(turned.scores.sum()) > (0.8 if by_roll else 1.0) * float(found.scores.sum()):
                found = turned
        return found

    def detect(self, rgb: np.ndarray, min_score: float = 0.5) -> list[Detection]:
        if not (0.0 <= min_score <= 1.0):
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        raw = self.detect_raw(rgb, min_score)
        return [to_detection(raw.boxes[i], raw.points[i], float(raw.scores[i]), int(raw.models[i]), w, h)
                for i in range(len(raw.scores))]


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            "the detector needs an H x W x 3 uint8 RGB array; decode images with facellm.tools.load_image first"
        )
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"the image is empty ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
    return np.ascontiguousarray(rgb)


def to_detection(box: np.ndarray, points: np.ndarray, score: float, model: int, width: int, height: int) -> Detection:
    """A schema Detection: box clipped to the image, named key points, kpts5 with estimated mouth corners."""
    x1, y1, x2, y2 = (float(v) for v in box)
    b = Box(x1=x1, y1=y1, x2=x2, y2=y2).clipped(width, height)
    pts = [(float(p[0]), float(p[1])) for p in points]
    re, le, nose, mouth = (np.array(p) for p in pts[:4])
    half = MOUTH_HALF_WIDTH * (le - re)
    kpts5 = [pts[0], pts[1], pts[2], tuple(float(v) for v in mouth - half), tuple(float(v) for v in mouth + half)]
    model_name = (FULL_RANGE, SHORT_RANGE)[model].name
    return Detection(
        box=b,
        score=min(max(score, 0.0), 1.0),
        kpts5=kpts5,
        keypoints=[Keypoint(name=n, x=p[0], y=p[1]) for n, p in zip(KEYPOINT_NAMES, pts)],
        source=f"mediapipe-blazeface-{model_name}",
    )
