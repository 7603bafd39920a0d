"""Geometric expression cues from landmarks: smile, open mouth, closed eyes, raised brows, gaze.

Every cue is a score in [0, 1] from plain geometry, plus the verdict ``score >= 0.5``. Lengths are divided
by the inter-ocular distance (between the eye centres), so they do not depend on the face's size in the
image; points are first rotated so that the eye line is level (roll removed). Ratios of two horizontal
lengths need no pose correction; when a head pose is given, a vertical length over a horizontal one is
multiplied by cos(yaw) / cos(pitch) to undo the foreshortening of both.

Each raw measure is mapped linearly between a "clearly not" and a "clearly yes" value (``RAMPS``). Those
ends were read off the bundled real photos (astronaut: broad smile, teeth showing; Grace Hopper: slight
closed-mouth smile; Tom Hanks: slight smile; group photo: laughing with nearly closed eyes, neutral faces,
a man looking to the side), and off synthetic edits of the astronaut's landmarks (lids moved onto each
other, lips parted, brows lifted). They are heuristics for clear cases, not a trained classifier.

``mesh478`` (MediaPipe indices, 468-477 the irises) is the preferred input; ``ibug68`` works for every cue
but gaze, which needs iris points: there gaze is (0, 0) and its direction "unknown (no iris landmarks)".
"""

from __future__ import annotations

import math

import numpy as np

from .face_inputs import FaceInputError, landmark_array
from .schema import Cue, ExpressionCues, HeadPose, Landmarks

# Named points per scheme; anatomical sides from the subject's view (subject's right = image left).
_MESH = {
    "r_eye_out": [33], "r_eye_in": [133], "l_eye_in": [362], "l_eye_out": [263],
    "r_lid_up": [160, 159, 158], "r_lid_down": [144, 145, 153],
    "l_lid_up": [385, 386, 387], "l_lid_down": [380, 374, 373],
    "r_brow": [70, 63, 105, 66, 107], "l_brow": [336, 296, 334, 293, 300],
    "mouth_r": [61], "mouth_l": [291], "lip_in_up": [82, 13, 312], "lip_in_down": [87, 14, 317],
    "lip_out_up": [0], "lip_out_down": [17],
    "r_iris": [468], "l_iris": [473],
}
_IBUG = {
    "r_eye_out": [36], "r_eye_in": [39], "l_eye_in": [42], "l_eye_out": [45],
    "r_lid_up": [37, 38], "r_lid_down": [41, 40], "l_lid_up": [43, 44], "l_lid_down": [47, 46],
    "r_brow": [17, 18, 19, 20, 21], "l_brow": [22, 23, 24, 25, 26],
    "mouth_r": [48], "mouth_l": [54], "lip_in_up": [61, 62, 63], "lip_in_down": [67, 66, 65],
    "lip_out_up": [51], "lip_out_down": [57],
}

# raw measure -> (value where the score is 0, value where it is 1); the verdict is score >= 0.5.
RAMPS = {
    # (mouth width / inter-ocular) * 0.5 + corner lift (corners above the lip centre, / inter-ocular) * 2
    "smile": (0.50, 0.72),
    # inner-lip gap / mouth width
    "mouth_open": (0.04, 0.16),
    # eye aspect ratio (lid gap / eye width), mapped reversed: small = closed
    "eye_closed": (0.22, 0.10),
    # brow height above the eye corners' line / inter-ocular distance
    "brow_raise": (0.40, 0.56),
}
# Gaze is the eyes' direction within the head (combine with the head pose for where the person looks).
GAZE_SIDE = 0.22  # |x| iris offset (eye half-widths) beyond which the eyes count as turned to one side
# The iris centre of an eye looking ahead sits ~0.12 half-widths above the corners' line (astronaut,
# Grace Hopper, Tom Hanks: -0.11 to -0.16); vertical offsets are weak cues (the lids follow the iris).
GAZE_Y_AHEAD, GAZE_VERTICAL = -0.12, 0.2


def _ramp(value: float, ends: tuple[float, float]) -> float:
    lo, hi = ends
    return float(np.clip((value - lo) / (hi - lo), 0.0, 1.0))


def _cue(value: float, name: str) -> Cue:
    score = _ramp(value, RAMPS[name])
    return Cue(score=round(score, 3), active=score >= 0.5)


def _named(pts: np.ndarray, scheme: str) -> dict[str, np.ndarray]:
    table = _MESH if scheme == "mesh478" else _IBUG
    return {k: pts[v].mean(axis=0) for k, v in table.items() if max(v) < len(pts)}


def measures(landmarks: Landmarks, pose: HeadPose | None = None) -> dict[str, float]:
    """The raw geometric measures behind the cues (for calibration and debugging)."""
    pts = landmark_array(landmarks, ("ibug68", "mesh478"))
    p = _named(pts, landmarks.scheme)
    r_eye = (p["r_eye_out"] + p["r_eye_in"]) / 2
    l_eye = (p["l_eye_out"] + p["l_eye_in"]) / 2
    axis = l_eye - r_eye
    iod = float(np.hypot(*axis))
    if iod < 2.0:
        raise FaceInputError(f"the eyes are {iod:.1f} px apart: the face is too small for expression cues")
    # Rotate about the eye midpoint so the eye line is level (x along it, y perpendicular, down).
    c, s = axis / iod
    rot = np.array([[c, s], [-s, c]])
    mid = (r_eye + l_eye) / 2
    q = {k: (v - mid) @ rot.T / iod for k, v in p.items()}
    sy = s_eye = 1.0  # scales for vertical / horizontal ratios
    if pose is not None:
        s_eye = 1.0 / math.cos(math.radians(min(abs(pose.pitch), 60.0)))
        # An eye sits on the curved side of the face: its image width shrinks less than cos(yaw), so the
        # eye aspect ratio gets the pitch correction only.
        sy = math.cos(math.radians(min(abs(pose.yaw), 60.0))) * s_eye

    def width(a: str, b: str) -> float:
        return abs(q[b][0] - q[a][0])

    out: dict[str, float] = {}
    mouth_w = width("mouth_r", "mouth_l")
    lip_centre_y = (q["lip_out_up"][1] + q["lip_out_down"][1]) / 2
    corners_y = (q["mouth_r"][1] + q["mouth_l"][1]) / 2
    lift = (lip_centre_y - corners_y) * sy  # > 0: corners above the middle of the lips
    out["mouth_width"] = mouth_w
    out["corner_lift"] = lift
    out["smile"] = mouth_w * 0.5 + lift * 2.0
    gap = max(q["lip_in_down"][1] - q["lip_in_up"][1], 0.0) * sy
    out["mouth_open"] = gap / max(mouth_w, 1e-6)
    for side in ("r", "l"):
        eye_w = width(f"{side}_eye_out", f"{side}_eye_in")
        lid_gap = max(q[f"{side}_lid_down"][1] - q[f"{side}_lid_up"][1], 0.0) * s_eye
        out[f"{side}_ear"] = lid_gap / max(eye_w, 1e-6)
    eye_line_y = np.mean([q[k][1] for k in ("r_eye_out", "r_eye_in", "l_eye_in", "l_eye_out")])
    out["brow_raise"] = float(eye_line_y - (q["r_brow"][1] + q["l_brow"][1]) / 2) * sy
    if "r_iris" in q and "l_iris" in q:
        offsets = []
        for side in ("r", "l"):
            centre = (q[f"{side}_eye_out"] + q[f"{side}_eye_in"]) / 2
            half = width(f"{side}_eye_out", f"{side}_eye_in") / 2
            offsets.append((q[f"{side}_iris"] - centre) / max(half, 1e-6))
        out["gaze_x"], out["gaze_y"] = (float(v) for v in np.mean(offsets, axis=0))
    return out


def gaze_words(gx: float, gy: float) -> str:
    """Plain words for an iris offset: where the eyes are turned, relative to the head."""
    parts = []
    if gy - GAZE_Y_AHEAD <= -GAZE_VERTICAL:
        parts.append("up")
    elif gy - GAZE_Y_AHEAD >= GAZE_VERTICAL:
        parts.append("down")
    if gx >= GAZE_SIDE:
        parts.append("to the image right (their left)")
    elif gx <= -GAZE_SIDE:
        parts.append("to the image left (their right)")
    return "eyes turned " + " and ".join(parts) if parts else "eyes centred (looking where the head points)"


# Closed eyes from dlib's 68 points (``lids``): MediaPipe's mesh barely moves its lids when the eyes close (on
# the bundled group photo t1.jpg two nearly closed pairs read mesh EAR 0.24-0.26, Grace Hopper's open eyes 0.25),
# while the 68-point EAR (pitch-corrected, each eye blended with the two-eye mean since blinks are symmetric)
# separates them: closed 0.15-0.21 (t1 faces 1, 4, 6; a sleeping baby and a child with shut eyes among 60
# UTKFace test faces: 0.17), open 0.22-0.55 — except smiling squints, whose cheeks push the lids up (open
# at 0.20-0.22 on UTKFace). Hence the verdict's threshold: 0.215, or 0.185 while the smile cue is on.
LID_EAR_CLOSED, LID_EAR_CLOSED_SMILING, LID_RAMP = 0.215, 0.185, 0.03


def _lid_cue(own: float, both: float, smiling: bool) -> Cue:
    t = LID_EAR_CLOSED_SMILING if smiling else LID_EAR_CLOSED
    v = 0.5 * own + 0.5 * both
    score = float(np.clip((t + LID_RAMP - v) / (2 * LID_RAMP), 0.0, 1.0))
    return Cue(score=round(score, 3), active=score >= 0.5)


def expression_cues(landmarks: Landmarks, pose: HeadPose | None = None,
                    lids: Landmarks | None = None) -> ExpressionCues:
    """Smile, open mouth, closed eyes, raised brows and gaze of one face from its landmarks.

    ``lids``: the face's ibug68 landmarks, when fitted, for the closed-eye cues (see ``LID_EAR_CLOSED``)."""
    m = measures(landmarks, pose)
    smile = _cue(m["smile"], "smile")
    right_closed, left_closed = _cue(m["r_ear"], "eye_closed"), _cue(m["l_ear"], "eye_closed")
    if lids is not None and lids.scheme == "ibug68":
        try:
            lm = measures(lids, pose)
        except FaceInputError:
            lm = None
        if lm is not None:
            both = (lm["r_ear"] + lm["l_ear"]) / 2
            right_closed = _lid_cue(lm["r_ear"], both, smile.active)
            left_closed = _lid_cue(lm["l_ear"], both, smile.active)
    if "gaze_x" in m:
        gaze = (round(m["gaze_x"], 3), round(m["gaze_y"], 3))
        words = gaze_words(*gaze)
    else:
        gaze, words = (0.0, 0.0), "unknown (no iris landmarks)"
    return ExpressionCues(
        smile=smile,
        mouth_open=_cue(m["mouth_open"], "mouth_open"),
        right_eye_closed=right_closed,
        left_eye_closed=left_closed,
        brow_raise=_cue(m["brow_raise"], "brow_raise"),
        gaze=gaze,
        gaze_direction=words,
        source=f"geometry of {landmarks.scheme} landmarks ({landmarks.source})",
    )
