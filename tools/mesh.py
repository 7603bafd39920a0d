"""MediaPipe's 478-point face mesh (468 mesh points + 2 x 5 iris points) through LiteRT.

What MediaPipe's graphs did, rebuilt with the two bundled models:

1. **ROI.** A square, rotated region around the face: centre of the detector box, side 1.5 x the box's
   long side, turned so that the eyes are level (angle of the right-eye -> left-eye vector), like
   MediaPipe's detection-to-ROI. A plain box (no eye points) gets an upright ROI.
2. **Mesh.** ``face_landmark.tflite`` on that ROI, resized to 192 x 192, RGB in [0, 1]: 468 x (x, y, z)
   in crop pixels and a face-presence logit. The points are mapped back through the ROI's affine map;
   z is scaled like x and y (pixels of the original image, smaller = closer to the camera).
   By default a second pass runs on the ROI rebuilt from the first mesh (centre and size from the
   points' extent in the face's own frame, angle from eye corners 33 -> 263, scale 1.5), as MediaPipe's
   tracking does; that centres the face better than the detector box and costs one more ~1.5 ms call.
3. **Irises.** ``iris_landmark.tflite`` on a 64 x 64 crop per eye (centre between the eye corners,
   side 2.3 x their distance, rotated level). It was trained on the eye that appears on the image left
   (the subject's right eye, corners 33 / 133); the other eye (362 / 263) is flipped horizontally before
   the model and its points flipped back, as MediaPipe does. Its 71 eye-contour points are not used;
   the 5 iris points (centre, then the nasal, upper, temporal and lower edge) become:

   * 468-472: the subject's **right** iris (image left, around mesh points 33 / 133), centre first;
   * 473-477: the subject's **left** iris (image right, around mesh points 362 / 263), centre first;

   which is MediaPipe's own 478-point indexing (``FACEMESH_RIGHT_IRIS`` = 469-472,
   ``FACEMESH_LEFT_IRIS`` = 474-477).

``Landmarks.score`` carries the face-presence probability: MediaPipe treats < 0.5 as "not a face".
Several faces are meshed in one batched model call (``mesh_all``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .assets import asset_path
from .litert_runtime import LiteModel, load_model
from .schema import Box, Detection, Landmarks

MESH_SIZE = 192
IRIS_SIZE = 64
ROI_SCALE = 1.5  # MediaPipe's face detection -> ROI and landmarks -> ROI scale
IRIS_ROI_SCALE = 2.3  # MediaPipe's eye corners -> iris ROI scale
PRESENCE_THRESHOLD = 0.5
SOURCE = "mediapipe-face-mesh+iris"

RIGHT_EYE_CORNERS = (33, 133)  # subject's right eye: outer, inner corner (image left)
LEFT_EYE_CORNERS = (362, 263)  # subject's left eye: inner, outer corner (image right)


class MeshInputError(ValueError):
    """The mesher was given an unusable image or face region."""


@dataclass(frozen=True)
class Roi:
    """A square region of side ``size`` centred at (cx, cy), turned by ``angle`` radians (the angle of
    the face's eye line in the image, y down: positive = the subject's left eye lower)."""

    cx: float
    cy: float
    size: float
    angle: float

    def to_crop(self, n: int) -> np.ndarray:
        """2 x 3 affine map from image pixels to an n x n crop in which the face is upright."""
        s = n / self.size
        c, sn = math.cos(self.angle) * s, math.sin(self.angle) * s
        # rotate by -angle about the centre, scale, move the centre to the crop centre
        m = np.array([[c, sn, 0.0], [-sn, c, 0.0]])
        m[:, 2] = np.array([n / 2, n / 2]) - m[:, :2] @ np.array([self.cx, self.cy])
        return m

    def crop(self, rgb: np.ndarray, n: int) -> np.ndarray:
        return cv2.warpAffine(rgb, self.to_crop(n), (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def to_image(self, pts: np.ndarray, n: int) -> np.ndarray:
        """Crop points (N, 2 or 3) back to image pixels; a third column (z) is scaled like x and y."""
        inv = cv2.invertAffineTransform(self.to_crop(n))
        out = np.array(pts, dtype=np.float64, copy=True)
        out[:, :2] = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
        if out.shape[1] > 2:
            out[:, 2] = pts[:, 2] * (self.size / n)
        return out


def _angle(p_from: Sequence[float], p_to: Sequence[float]) -> float:
    return math.atan2(p_to[1] - p_from[1], p_to[0] - p_from[0])


def roi_from_detection(det: Detection | Box, scale: float = ROI_SCALE) -> Roi:
    """MediaPipe's detection -> ROI: box centre, eye-line rotation, square side scale x long side."""
    box = det.box if isinstance(det, Detection) else det
    angle = _angle(det.kpts5[0], det.kpts5[1]) if isinstance(det, Detection) and len(det.kpts5) >= 2 else 0.0
    cx, cy = box.center
    # the box is axis-aligned around a possibly rolled face: its long side bounds the face's size
    return Roi(cx, cy, scale * max(box.width, box.height), angle)


def roi_from_mesh(points: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """MediaPipe's landmarks -> ROI: rotation from eye corners 33 -> 263, extent of all points measured in
    the face's own (rotated) frame, square side scale x the long side."""
    angle = _angle(points[RIGHT_EYE_CORNERS[0]], points[LEFT_EYE_CORNERS[1]])
    c, s = math.cos(angle), math.sin(angle)
    xy = points[:468, :2]
    u = xy[:, 0] * c + xy[:, 1] * s  # along the eye line
    v = -xy[:, 0] * s + xy[:, 1] * c  # across it
    uc, vc = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2
    size = max(u.max() - u.min(), v.max() - v.min())
    return Roi(uc * c - vc * s, uc * s + vc * c, scale * size, angle)


def _eye_roi(points: np.ndarray, a: int, b: int) -> Roi:
    p0, p1 = points[a, :2], points[b, :2]
    c = (p0 + p1) / 2
    return Roi(float(c[0]), float(c[1]), IRIS_ROI_SCALE * float(np.linalg.norm(p1 - p0)), _angle(p0, p1))


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MeshInputError("the mesher needs an H x W x 3 uint8 RGB array (see facellm.tools.load_image)")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise MeshInputError(f"the image is too small ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
    return rgb


def _check_face(face: Detection | Box | Roi, width: int, height: int) -> Detection | Box | Roi:
    if isinstance(face, Roi):
        vals = [face.cx, face.cy, face.size, face.angle]
        if not all(math.isfinite(v) for v in vals) or face.size < 4:
            raise MeshInputError(f"unusable face region {face}")
        return face
    box = face.box if isinstance(face, Detection) else face
    if not isinstance(box, Box):
        raise MeshInputError(f"expected a Detection, Box or Roi, got {type(face).__name__}")
    vals = box.as_list()
    if not all(math.isfinite(v) for v in vals) or box.width < 2 or box.height < 2:
        raise MeshInputError(f"the face box {vals} is empty or not finite")
    if box.clipped(width, height).area <= 0:
        raise MeshInputError(f"the face box {vals} lies outside the {width}x{height} image")
    return face


class FaceMesher:
    """468-point mesh + irises for faces given as detections (box + eyes), plain boxes or ROIs."""

    def __init__(self, refine: bool = True, irises: bool = True) -> None:
        self.refine = refine
        self.irises = irises
        self._mesh: LiteModel = load_model(asset_path("face_landmark"))
        self._iris: LiteModel | None = load_model(asset_path("iris_landmark")) if irises else None
        names = self._mesh.output_names
        out = self._mesh.run(np.zeros((1, MESH_SIZE, MESH_SIZE, 3), np.float32))
        self._pts_out = next(k for k in names if out[k].size == 468 * 3)
        self._score_out = next(k for k in names if out[k].size == 1)

    # -- the raw model steps ------------------------------------------------------------------------
    def run_rois(self, rgb: np.ndarray, rois: Sequence[Roi]) -> tuple[list[np.ndarray], np.ndarray]:
        """One batched mesh-model call: 468 x 3 points in image pixels and the presence per ROI."""
        crops = np.stack([r.crop(rgb, MESH_SIZE) for r in rois]).astype(np.float32) / 255.0
        out = self._mesh.run(crops)
        raw = out[self._pts_out].reshape(len(rois), 468, 3)
        logits = np.clip(out[self._score_out].reshape(len(rois)), -60, 60)
        scores = 1.0 / (1.0 + np.exp(-logits))
        return [r.to_image(p, MESH_SIZE) for r, p in zip(rois, raw)], scores

    def presence(self, rgb: np.ndarray, rois: Sequence[Roi]) -> np.ndarray:
        """Face-presence probability of each ROI (the mesh model's face flag): < 0.5 means no face."""
        rgb = _check_rgb(rgb)
        if not rois:
            return np.zeros((0,), np.float64)
        return self.run_rois(rgb, list(rois))[1]

    def _run_iris(self, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
        """10 x 3 iris points: subject's right iris (centre + 4), then the left one."""
        out = []
        for (a, b), flip in ((RIGHT_EYE_CORNERS, False), (LEFT_EYE_CORNERS, True)):
            roi = _eye_roi(points, a, b)
            if roi.size < 2:  # eye corners collapsed (an unusable mesh): put the iris between them
                centre = points[[a, b]].mean(0)
                out.append(np.repeat(centre[None], 5, 0))
                continue
            crop = roi.crop(rgb, IRIS_SIZE)
            if flip:
                crop = crop[:, ::-1]
            res = self._iris.run((crop.astype(np.float32) / 255.0)[None])
            iris = next(v for v in res.values() if v.size == 15).reshape(5, 3).astype(np.float64)
            if flip:
                iris[:, 0] = IRIS_SIZE - iris[:, 0]
            out.append(roi.to_image(iris, IRIS_SIZE))
        return np.concatenate(out)

    # -- public API ---------------------------------------------------------------------------------
    def mesh_arrays(
        self, rgb: np.ndarray, faces: Sequence[Detection | Box | Roi]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """(478 x 3 arrays in image pixels, presence scores) for several faces, batched."""
        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        faces = [_check_face(f, w, h) for f in faces]
        if not faces:
            return [], np.zeros((0,), np.float64)
        rois = [f if isinstance(f, Roi) else roi_from_detection(f) for f in faces]
        meshes, scores = self.run_rois(rgb, rois)
        if self.refine:
            again = [i for i, s in enumerate(scores) if s >= PRESENCE_THRESHOLD]
            if again:
                m2, s2 = self.run_rois(rgb, [roi_from_mesh(meshes[i]) for i in again])
                for j, i in enumerate(again):
                    meshes[i], scores[i] = m2[j], s2[j]
        if self._iris is not None:
            meshes = [np.concatenate([m, self._run_iris(rgb, m)]) for m in meshes]
        return meshes, scores

    def mesh_all(self, rgb: np.ndarray, faces: Sequence[Detection | Box | Roi]) -> list[Landmarks]:
        """One ``mesh478`` Landmarks per face (``score`` = face presence), in the order given."""
        arrays, scores = self.mesh_arrays(rgb, faces)
        return [
            Landmarks(
                scheme="mesh478",
                points=[(float(x), float(y), float(z)) for x, y, z in pts],
                source=SOURCE if self._iris is not None else "mediapipe-face-mesh",
                score=float(s),
            )
            for pts, s in zip(arrays, scores)
        ]

    def mesh(self, rgb: np.ndarray, face: Detection | Box | Roi) -> Landmarks:
        """The ``mesh478`` landmarks of one face (a detection with eye points is best; a box works)."""
        return self.mesh_all(rgb, [face])[0]
