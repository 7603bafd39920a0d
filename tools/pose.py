"""Head pose (yaw, pitch, roll in degrees) from 2-D landmarks by PnP against a canonical 3-D face.

The canonical face (``tools/data/canonical_face.json``) holds 3-D positions, in millimetres, of 50 MediaPipe
mesh points; it was made by ``build_canonical`` below from MediaPipe's own 3-D mesh output on near-frontal
faces of the bundled test photos (the mediapipe 0.10.14 wheel does not ship its canonical_face_model.obj).
A ``mesh478`` landmark set is matched on rigid points only (nose, eye corners, forehead, cheekbones, temples:
no mouth, jaw or brows, which move with expression); an ``ibug68`` set on its 14 points that have a mesh
counterpart (eye corners, nose, mouth corners, chin).

Camera: pinhole, focal length = image width, principal point at the image centre, no distortion. Angles
are measured against the line of sight from the camera to the face, so a face near the image border that
looks into the lens reads as frontal. Sign conventions are those of ``schema.HeadPose``:

* yaw > 0: the subject turns to their left (their nose points towards the image right);
* pitch > 0: head up (chin raised);
* roll > 0: head tilted towards the subject's left shoulder (clockwise in the image).

The zero of pitch is where the mid-forehead (mesh 10) and the chin (mesh 152) are equally far from the
camera; people who hold their head naturally upright often read a few degrees from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .face_inputs import FaceInputError, landmark_array
from .schema import HeadPose, Landmarks

CANONICAL_FILE = Path(__file__).parent / "data" / "canonical_face.json"

# Thresholds (degrees) for the plain-words direction.
FRONTAL_LIMIT = 15.0  # every angle below this: "frontal"
STRONG_YAW = 45.0  # "turned far to their left / right"
PROFILE_YAW = 70.0  # "in profile ..."

# Mesh points on the face's midline, and left/right mirror pairs (subject's right first = image left).
MIDLINE = [10, 151, 9, 168, 6, 197, 195, 5, 4, 1, 2, 0, 17, 152]
PAIRS = [(33, 263), (133, 362), (61, 291), (98, 327), (129, 358), (234, 454), (93, 323), (132, 361), (50, 280),
         (123, 352), (117, 346), (127, 356), (162, 389), (109, 338), (67, 297), (103, 332), (70, 300), (55, 285),
         (105, 334), (172, 397), (136, 365), (149, 378)]
# Points that do not move with expression: used for mesh478 PnP.
MESH_RIGID = [10, 151, 9, 168, 6, 197, 195, 5, 4, 1, 2, 33, 263, 133, 362, 98, 327, 129, 358, 234, 454, 93, 323,
              50, 280, 123, 352, 117, 346, 127, 356, 162, 389, 109, 338, 67, 297, 103, 332]
# iBUG-68 point -> mesh point at the same anatomical place.
IBUG_TO_MESH = {27: 168, 28: 6, 29: 195, 30: 1, 31: 98, 33: 2, 35: 327, 36: 33, 39: 133, 42: 362, 45: 263,
                48: 61, 54: 291, 8: 152}


def _face_frame(points: dict[int, np.ndarray]) -> np.ndarray:
    """Express one mesh's 3-D points in the face frame: x subject's right -> left, y forehead -> chin, z away
    from the camera; origin between the eye corners; 90 mm between the outer eye corners."""
    x = np.mean([(points[left] - points[right]) / np.linalg.norm(points[left] - points[right])
                 for right, left in [(33, 263), (133, 362), (234, 454), (127, 356)]], axis=0)
    x /= np.linalg.norm(x)
    y = points[152] - points[10]
    y -= x * (y @ x)
    y /= np.linalg.norm(y)
    rot = np.stack([x, y, np.cross(x, y)])
    origin = np.mean([points[i] for i in (33, 263, 133, 362)], axis=0)
    scale = 90.0 / np.linalg.norm(points[263] - points[33])
    return {i: (p - origin) @ rot.T * scale for i, p in points.items()}


def build_canonical(meshes: Sequence[np.ndarray]) -> dict:
    """The canonical 3-D face from several meshes (each 468+ x 3: MediaPipe x, y, z in pixels).

    Each mesh is put in the face frame, the frames are averaged, then the result is made mirror-symmetric
    (midline points get x = 0; each pair gets the mean of itself and its mirrored partner).
    """
    wanted = sorted(set(MIDLINE) | {i for pair in PAIRS for i in pair})
    frames = [_face_frame({i: np.asarray(m[i], dtype=np.float64) for i in wanted}) for m in meshes]
    mean = {i: np.mean([f[i] for f in frames], axis=0) for i in wanted}
    flip = np.array([-1.0, 1.0, 1.0])
    for i in MIDLINE:
        mean[i][0] = 0.0
    for right, left in PAIRS:
        r = (mean[right] + mean[left] * flip) / 2
        mean[right], mean[left] = r, r * flip
    return {str(i): [round(float(v), 2) for v in mean[i]] for i in wanted}


# Near-frontal faces the canonical face is averaged from: (photo, approximate face centre in pixels).
CANONICAL_FACES = [("astronaut", (222, 125)), ("grace_hopper", (265, 245)), ("tom_hanks", (56, 56)),
                   ("group", (525, 320)), ("group", (1175, 320))]


def rebuild_canonical(path: Path = CANONICAL_FILE) -> dict:
    """Re-make ``canonical_face.json`` with this package's detector and mesh (needs the fetched models)."""
    from .detector import detect
    from .image_io import load_image
    from .mesh import FaceMesher
    from .photos import photo

    mesher, meshes = FaceMesher(), []
    for name, (cx, cy) in CANONICAL_FACES:
        img = load_image(photo(name))
        det = min(detect(img), key=lambda d: math.hypot(d.box.center[0] - cx, d.box.center[1] - cy))
        meshes.append(np.asarray(mesher.mesh(img.rgb, det).points, dtype=np.float64))
    doc = {
        "about": "Canonical 3-D face for head-pose PnP: positions in millimetres of MediaPipe face-mesh points "
                 "(MediaPipe's 478-point indexing). Frame: x from the subject's right to left (image right), y from "
                 "mid-forehead (10) down to chin (152), z away from the camera; origin between the four eye corners; "
                 "90 mm between the outer eye corners (33, 263).",
        "origin": "Made by facellm.tools.pose.rebuild_canonical from the 3-D output of MediaPipe's face_landmark.tflite "
                  "(mediapipe 0.10.14 wheel, Apache-2.0) on near-frontal faces of the bundled test photos "
                  f"({', '.join(n for n, _ in CANONICAL_FACES)}), each put in the face frame, averaged and made "
                  "mirror-symmetric. The mediapipe wheel does not ship its canonical_face_model.obj.",
        "faces_used": len(meshes),
    }
    points = build_canonical(meshes)
    text = json.dumps(doc, indent=1)[:-2] + ',\n "points": {\n'
    text += ",\n".join(f'  "{k}": {json.dumps(v)}' for k, v in points.items()) + "\n }\n}\n"
    path.write_text(text)
    canonical_points.cache_clear()
    return points


@lru_cache(maxsize=1)
def canonical_points() -> dict[int, np.ndarray]:
    data = json.loads(CANONICAL_FILE.read_text())
    return {int(k): np.asarray(v, dtype=np.float64) for k, v in data["points"].items()}


def _correspondences(landmarks: Landmarks) -> tuple[np.ndarray, np.ndarray, str]:
    pts = landmark_array(landmarks, ("ibug68", "mesh478"))
    canon = canonical_points()
    if landmarks.scheme == "mesh478":
        idx = MESH_RIGID
        return pts[idx], np.stack([canon[i] for i in idx]), f"{len(idx)} rigid mesh478 points"
    ibug = list(IBUG_TO_MESH)
    return pts[ibug], np.stack([canon[IBUG_TO_MESH[i]] for i in ibug]), f"{len(ibug)} ibug68 points"


def _towards_line_of_sight(t: np.ndarray) -> np.ndarray:
    """Rotation taking the camera-to-face ray onto the optical axis (the smallest such rotation)."""
    d = t / np.linalg.norm(t)
    axis = np.cross(d, [0.0, 0.0, 1.0])
    s, c = np.linalg.norm(axis), float(d[2])
    if s < 1e-9:
        return np.eye(3)
    rvec = axis / s * math.atan2(s, c)
    return cv2.Rodrigues(rvec)[0]


def angles_from_rotation(rot: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees for a model-to-camera rotation, with schema.HeadPose's signs.

    Decomposed as rot = Rz(roll) @ Rx(-pitch) @ Ry(-yaw) in camera axes (x right, y down, z forward).
    """
    # Ry(-yaw) turns the face's forward direction (0, 0, -1) towards +x (image right) for yaw > 0; Rx(-pitch)
    # turns it towards -y (image up) for pitch > 0; Rz(roll) turns the eye line clockwise in the image.
    pitch = -math.degrees(math.asin(float(np.clip(rot[2, 1], -1.0, 1.0))))
    yaw = math.degrees(math.atan2(rot[2, 0], rot[2, 2]))
    roll = math.degrees(math.atan2(-rot[0, 1], rot[1, 1]))
    return yaw, pitch, roll


def direction_words(yaw: float, pitch: float, roll: float) -> str:
    """Plain words for a pose, e.g. 'frontal', 'turned to their left, looking down'."""
    parts = []
    side = "their left" if yaw > 0 else "their right"
    if abs(yaw) >= PROFILE_YAW:
        parts.append(f"in profile, turned to {side}")
    elif abs(yaw) >= STRONG_YAW:
        parts.append(f"turned far to {side}")
    elif abs(yaw) >= FRONTAL_LIMIT:
        parts.append(f"turned to {side}")
    if abs(pitch) >= FRONTAL_LIMIT:
        parts.append("looking up" if pitch > 0 else "looking down")
    if abs(roll) >= FRONTAL_LIMIT:
        parts.append(f"tilted towards {'their left' if roll > 0 else 'their right'} shoulder")
    return ", ".join(parts) if parts else "frontal"


def estimate_pose(landmarks: Landmarks, image_size: tuple[int, int] | None = None) -> HeadPose:
    """Head pose of one face from its ``mesh478`` or ``ibug68`` landmarks.

    ``image_size`` is (width, height) of the image the landmarks are in; without it the camera is centred
    on the face with a long focal length (nearly orthographic), which is close enough for faces that fill
    a small part of the view.
    """
    img_pts, obj_pts, what = _correspondences(landmarks)
    if image_size is not None:
        w, h = (float(v) for v in image_size)
        if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
            raise FaceInputError(f"image_size must be two positive numbers (width, height), got {image_size!r}")
        f, cx, cy = w, w / 2, h / 2
    else:
        span = float(np.ptp(img_pts, axis=0).max())
        f = 10.0 * max(span, 1.0)
        cx, cy = (float(v) for v in img_pts.mean(axis=0))
    if float(np.ptp(img_pts, axis=0).min()) < 1.0:
        raise FaceInputError("the landmarks are degenerate (all on one line or one point); no pose can be fitted")
    cam = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj_pts, img_pts, cam, None, flags=cv2.SOLVEPNP_EPNP)
    if not ok or tvec[2, 0] <= 0:  # EPnP can land behind the camera on odd inputs: start from a frontal guess
        rvec = np.zeros((3, 1))
        tvec = np.array([[0.0], [0.0], [f * 90.0 / max(float(np.ptp(img_pts[:, 0])), 1.0)]])
    ok, rvec, tvec = cv2.solvePnP(obj_pts, img_pts, cam, None, rvec, tvec, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or not np.isfinite(rvec).all() or tvec[2, 0] <= 0:
        raise FaceInputError("no head pose fits these landmarks")
    rot = _towards_line_of_sight(tvec.ravel()) @ cv2.Rodrigues(rvec)[0]
    yaw, pitch, roll = angles_from_rotation(rot)
    return HeadPose(
        yaw=round(yaw, 1), pitch=round(pitch, 1), roll=round(roll, 1),
        direction=direction_words(yaw, pitch, roll),
        source=f"OpenCV solvePnP on {what} vs a canonical 3-D face (MediaPipe-derived)",
    )


if __name__ == "__main__":  # python -m facellm.tools.pose: re-make the canonical face file
    print(f"wrote {len(rebuild_canonical())} points to {CANONICAL_FILE}")
