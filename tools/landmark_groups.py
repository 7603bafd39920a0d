"""Named landmark groups (eyes, brows, nose, lips, contour, irises, forehead) as index tables per scheme.

The groups feed the model's region encoder and the face parser, so they must be anatomically right;
they were checked by drawing every index on real faces (astronaut, Grace Hopper). Names are from the
subject's point of view: ``right_eye`` is the subject's right eye, on the image left of a frontal face.

Polygon groups are listed in drawing order (a closed outline that ``cv2.fillPoly`` can fill):
``right_eye`` / ``left_eye`` (eyelid contour), ``right_brow`` / ``left_brow`` (upper edge outer -> inner,
then lower edge back), ``nose`` (outline round the bridge, the alae and the nostril base),
``upper_lip`` / ``lower_lip`` (outer edge, then inner edge back), ``mouth_outer`` / ``mouth_inner``
(lip contours), ``face_oval`` (mesh silhouette from the mid-forehead clockwise in the image),
``forehead`` (the band between the upper face-oval arc and the row above the brows). Line groups:
``jaw`` (ear to ear under the chin, subject's right first), ibug68's ``nose_bridge``. Iris groups
(mesh478 only): centre first, then the nasal, upper, temporal and lower edge.
"""

from __future__ import annotations

import numpy as np

from .schema import Landmarks, Point

# --- MediaPipe 478-point mesh -------------------------------------------------------------------------
_MESH_LIPS_UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
_MESH_LIPS_LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
_MESH_LIPS_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
_MESH_LIPS_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]

MESH478: dict[str, list[int]] = {
    "right_eye": [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246],
    "left_eye": [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466],
    "right_brow": [70, 63, 105, 66, 107, 55, 65, 52, 53, 46],
    "left_brow": [300, 293, 334, 296, 336, 285, 295, 282, 283, 276],
    "nose": [168, 193, 245, 188, 114, 217, 209, 49, 129, 64, 98, 97, 2, 326, 327, 294, 358, 279, 429, 437,
             343, 412, 465, 417],
    "upper_lip": _MESH_LIPS_UPPER_OUTER + _MESH_LIPS_UPPER_INNER[::-1],
    "lower_lip": _MESH_LIPS_LOWER_OUTER + _MESH_LIPS_LOWER_INNER[::-1],
    "mouth_outer": _MESH_LIPS_LOWER_OUTER + _MESH_LIPS_UPPER_OUTER[::-1][1:-1],
    "mouth_inner": _MESH_LIPS_LOWER_INNER + _MESH_LIPS_UPPER_INNER[::-1][1:-1],
    "face_oval": [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                  152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109],
    "jaw": [234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323,
            454],
    # a closed band: the upper face-oval arc (subject's right -> left), then back along the row of mesh
    # points just above the brows
    "forehead": [162, 21, 54, 103, 67, 109, 10, 338, 297, 332, 284, 251, 389,
                 301, 298, 333, 299, 337, 151, 108, 69, 104, 68, 71],
    "right_iris": [468, 469, 470, 471, 472],
    "left_iris": [473, 474, 475, 476, 477],
}

# --- iBUG 300-W 68 points (0-based) ------------------------------------------------------------------
IBUG68: dict[str, list[int]] = {
    "right_eye": list(range(36, 42)),
    "left_eye": list(range(42, 48)),
    "right_brow": list(range(17, 22)),
    "left_brow": list(range(22, 27)),
    # outline: bridge top, down the subject's right side to the nostril base and up the other side
    "nose": [27, 31, 32, 33, 34, 35],
    "nose_bridge": [27, 28, 29, 30],
    "upper_lip": [48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60],
    "lower_lip": [48, 59, 58, 57, 56, 55, 54, 64, 65, 66, 67, 60],
    "mouth_outer": list(range(48, 60)),
    "mouth_inner": list(range(60, 68)),
    "jaw": list(range(0, 17)),
}

FIVE: dict[str, list[int]] = {
    "right_eye": [0],
    "left_eye": [1],
    "nose": [2],
    "mouth_outer": [3, 4],
}

TABLES: dict[str, dict[str, list[int]]] = {"mesh478": MESH478, "ibug68": IBUG68, "five": FIVE}
SCHEME_SIZES = {"mesh478": 478, "ibug68": 68, "five": 5}


class LandmarkGroupError(ValueError):
    """A landmark set does not have the points its scheme needs."""


def _points(landmarks: Landmarks) -> np.ndarray:
    if landmarks.scheme not in TABLES:
        raise LandmarkGroupError(f"unknown landmark scheme {landmarks.scheme!r}")
    pts = np.array([p[:2] for p in landmarks.points], dtype=np.float64).reshape(-1, 2)
    need = SCHEME_SIZES[landmarks.scheme]
    # a mesh without the iris refinement has 468 points: everything but the irises is still there
    if len(pts) != need and not (landmarks.scheme == "mesh478" and len(pts) == 468):
        raise LandmarkGroupError(f"a {landmarks.scheme} landmark set needs {need} points, got {len(pts)}")
    if not np.isfinite(pts).all():
        raise LandmarkGroupError("landmark points must be finite")
    return pts


def group_indices(scheme: str) -> dict[str, list[int]]:
    """The index table of a scheme ('mesh478', 'ibug68' or 'five')."""
    if scheme not in TABLES:
        raise LandmarkGroupError(f"unknown landmark scheme {scheme!r}; known: {sorted(TABLES)}")
    return TABLES[scheme]


def groups(landmarks: Landmarks) -> dict[str, list[Point]]:
    """Every named group of a landmark set as 2-D points in image pixels (groups it lacks are left out)."""
    pts = _points(landmarks)
    out: dict[str, list[Point]] = {}
    for name, idx in TABLES[landmarks.scheme].items():
        if max(idx) < len(pts):
            out[name] = [(float(pts[i, 0]), float(pts[i, 1])) for i in idx]
    return out


def group_array(landmarks: Landmarks, name: str) -> np.ndarray:
    """One group as an (N, 2) float array; KeyError if the scheme has no such group."""
    pts = _points(landmarks)
    idx = TABLES[landmarks.scheme].get(name)
    if idx is None or max(idx) >= len(pts):
        raise KeyError(f"{landmarks.scheme} landmarks have no group {name!r}")
    return pts[idx]


def kpts5_from(landmarks: Landmarks) -> list[Point]:
    """The 5 alignment points (right eye, left eye, nose tip, right and left mouth corner).

    mesh478: iris centres (468, 473; eye-contour means without irises), nose tip 4 (closest to iBUG's
    nose tip 30 on our photos), mouth corners 61 / 291. ibug68: eye-contour means, 30, 48, 54.
    """
    pts = _points(landmarks)
    if landmarks.scheme == "five":
        sel = [pts[i] for i in range(5)]
    elif landmarks.scheme == "ibug68":
        sel = [pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]
    else:
        if len(pts) >= 478:
            re, le = pts[468], pts[473]
        else:
            re, le = pts[MESH478["right_eye"]].mean(0), pts[MESH478["left_eye"]].mean(0)
        sel = [re, le, pts[4], pts[61], pts[291]]
    return [(float(p[0]), float(p[1])) for p in sel]
