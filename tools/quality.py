"""Is this face good enough to analyse? Size, sharpness, exposure, pose and occlusion, with reasons.

What each number measures (all computed on the face only):

* ``face_size``: distance between the eye centres in pixels (from landmarks; without them, 0.42 x the box
  width, the ratio measured on MediaPipe boxes of the bundled photos).
* ``blur``: variance of the Laplacian of the face crop, resampled to 112 px wide so it does not depend on
  the face's size, divided by the crop's own gray-level variance (so a dark or flat face is not taken for
  a blurred one), mapped to [0, 1] by ``r / (r + BLUR_HALF)``. The bundled photos read 0.9-0.97; the
  astronaut blurred with a Gaussian of sigma 1 / 2 / 3 / 5 % of her face width reads 0.75 / 0.46 / 0.32 /
  0.22 (below ``MIN_SHARPNESS`` = 0.3 is unusable).
* ``exposure``: mean luminance of the face in [0, 1]; under- / over-exposure is also judged from the share
  of nearly black / nearly white face pixels.
* ``pose_extremity``: ``hypot(yaw / 90, pitch / 60)`` clipped to [0, 1] (0 frontal, 1 profile or head far
  up / down).
* ``occlusion``: share of the face's skin area (the landmark face oval, pulled in a little, without eyes,
  brows and lips) that is not skin-coloured. The skin colour is the median CIELAB colour of that area
  above half-way from the eyes to the nose tip (forehead, around the eyes, upper cheeks), where masks,
  hands and scarves rarely reach. A pixel is not skin when its a-b colour is > 20 away from it, or it is
  far greyer (chroma < 0.4 x the skin's), far darker (L < 0.35 x) or much lighter (L > +25). On the
  bundled photos clean faces read 0.0-0.3 (grayscale Tom Hanks with hard side light ~0.35, since only
  lightness counts there); the astronaut with the insightface mask textures warped over her lower face
  reads 0.55-0.8. It also counts thick glasses frames, deep shadows and beards, and cannot see an occluder
  coloured like the skin. With a ``FaceParse`` that has an occlusion label, that label's area is used.

``usable`` is False when any reason applies; ``score`` is the product of the per-factor scores.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .face_inputs import as_box, as_rgb, landmark_array
from .image_io import LoadedImage
from .schema import Box, FaceParse, HeadPose, Landmarks, Quality

# Thresholds behind the reasons (documented in the module docstring).
MIN_EYE_DISTANCE = 20.0  # px between eye centres; below, detail is too coarse for most tools
GOOD_EYE_DISTANCE = 40.0
BLUR_HALF = 0.078  # Laplacian-to-intensity variance ratio that maps to a blur score of 0.5
MIN_SHARPNESS = 0.3
DARK, BRIGHT = 0.18, 0.85  # mean face luminance limits
CLIP_SHARE = 0.35  # share of crushed (< 0.04) or blown (> 0.97) face pixels that flags exposure
MAX_POSE_EXTREMITY = 0.65
MAX_OCCLUSION = 0.45
SKIN_CHROMA_DISTANCE = 20.0  # CIELAB a-b distance from the skin colour beyond which a pixel is not skin
DARK_FACTOR = 0.35  # darker than this share of the skin's lightness: not skin (black cloth, dark glasses)
GREY_FACTOR = 0.4  # chroma below this share of the skin's: not skin (white or grey cloth)
BRIGHT_MARGIN = 25.0  # this much lighter (L*) than the skin: not skin (white cloth)
BOX_IOD_RATIO = 0.42

_MESH_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
              176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
_MESH_HOLES = [
    [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7],  # right eye
    [263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249],  # left eye
    [70, 63, 105, 66, 107, 55, 65, 52, 53, 46],  # right brow
    [300, 293, 334, 296, 336, 285, 295, 282, 283, 276],  # left brow
    [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146],  # lips
]
_MESH_SKIN_REF = ([33, 133, 362, 263], 1)  # eye corners, nose tip: the skin reference lies above
_IBUG_OVAL = list(range(0, 17)) + [26, 25, 24, 23, 22, 21, 20, 19, 18, 17]
_IBUG_HOLES = [list(range(36, 42)), list(range(42, 48)), list(range(17, 22)), list(range(22, 27)), list(range(48, 60))]
_IBUG_SKIN_REF = ([36, 39, 42, 45], 30)


def _eye_distance(pts: np.ndarray, scheme: str) -> float:
    if scheme == "mesh478":
        r, l = pts[[33, 133]].mean(axis=0), pts[[362, 263]].mean(axis=0)
    else:
        r, l = pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)
    return float(np.hypot(*(l - r)))


def _crop(rgb: np.ndarray, box: Box) -> tuple[np.ndarray, int, int]:
    b = box.clipped(rgb.shape[1], rgb.shape[0])
    x1, y1 = int(math.floor(b.x1)), int(math.floor(b.y1))
    x2, y2 = max(int(math.ceil(b.x2)), x1 + 1), max(int(math.ceil(b.y2)), y1 + 1)
    return rgb[y1:y2, x1:x2], x1, y1


def sharpness(gray_face: np.ndarray) -> float:
    """Blur score in [0, 1] of a gray face crop (see the module docstring)."""
    h, w = gray_face.shape
    size = (112, max(int(round(112 * h / max(w, 1))), 8))
    g = cv2.resize(gray_face, size, interpolation=cv2.INTER_AREA if w > 112 else cv2.INTER_CUBIC)
    g = g.astype(np.float64) / 255.0
    lap = cv2.Laplacian(g, cv2.CV_64F, ksize=3)
    ratio = float(lap.var()) / max(float(g.var()), 1e-4)
    return ratio / (ratio + BLUR_HALF)


def _face_masks(shape: tuple[int, int], pts: np.ndarray | None, scheme: str | None, box: Box, offset: tuple[int, int]):
    """(skin-area mask, skin-reference mask) over a crop, from landmarks or else from the box."""
    h, w = shape
    area = np.zeros((h, w), np.uint8)
    ref = np.zeros((h, w), np.uint8)
    ox, oy = offset
    if pts is None:
        cx, cy = box.center[0] - ox, box.center[1] - oy
        cv2.ellipse(area, (int(cx), int(cy)), (int(box.width * 0.42), int(box.height * 0.48)), 0, 0, 360, 1, -1)
        ref[: max(int(box.y1 - oy + box.height * 0.5), 0)] = 1  # above half-way from the eyes to the nose tip, roughly
        ref &= area
        return area.astype(bool), ref.astype(bool)
    local = pts - [ox, oy]
    oval, holes, refs = (_MESH_OVAL, _MESH_HOLES, _MESH_SKIN_REF) if scheme == "mesh478" else (
        _IBUG_OVAL, _IBUG_HOLES, _IBUG_SKIN_REF)
    cv2.fillPoly(area, [np.round(local[oval]).astype(np.int32)], 1)
    for hole in holes:
        cv2.fillPoly(area, [np.round(local[hole]).astype(np.int32)], 0)
    # Pull the outline in a little: landmark ovals sit on the face's edge, where hair and background begin.
    k = max(int(round(0.08 * _eye_distance(pts, scheme))), 1)
    area = cv2.erode(area, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    # Skin reference: the face area above half-way from the eyes to the nose tip (forehead, around the eyes,
    # upper cheeks), where masks, hands and scarves rarely reach; its median colour averages over highlights
    # and shading.
    eyes_y, nose_y = local[refs[0]][:, 1].mean(), local[refs[1]][1]
    ref[: max(int(round((eyes_y + nose_y) / 2)), 0)] = 1
    ref &= area
    return area.astype(bool), ref.astype(bool)


def _occlusion(crop: np.ndarray, area: np.ndarray, ref: np.ndarray) -> float:
    if area.sum() < 20 or ref.sum() < 5:
        return 0.0
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float64)
    lab[..., 0] *= 100.0 / 255.0  # OpenCV stores L as 0..255 and a, b offset by 128
    lab[..., 1:] -= 128.0
    skin = np.median(lab[ref], axis=0)
    px = lab[area]
    # Shading changes lightness far more than hue, so colour is judged on a, b; lightness only flags what no
    # shadow or highlight on skin explains (black or white cloth, dark glasses).
    chroma_far = np.hypot(px[:, 1] - skin[1], px[:, 2] - skin[2]) > SKIN_CHROMA_DISTANCE
    too_dark = px[:, 0] < DARK_FACTOR * skin[0]
    skin_chroma = float(np.hypot(skin[1], skin[2]))
    # Grey or white cloth on a colour photo: far less colourful than the skin (off for grayscale photos).
    too_grey = (np.hypot(px[:, 1], px[:, 2]) < GREY_FACTOR * skin_chroma) if skin_chroma > 8.0 else False
    too_bright = px[:, 0] > skin[0] + BRIGHT_MARGIN
    return float((chroma_far | too_dark | too_bright | too_grey).mean())


def _parse_occlusion(parse: FaceParse) -> float | None:
    names = [n for n in parse.regions if "occlu" in n.lower()]
    if not names:
        return None
    total = sum(r.area for n, r in parse.regions.items() if n.lower() not in ("background", "bg", "hair"))
    return min(sum(parse.regions[n].area for n in names) / total, 1.0) if total else None


def assess_quality(
    rgb: np.ndarray | LoadedImage,
    box: Box,
    landmarks: Landmarks | None = None,
    pose: HeadPose | None = None,
    parse: FaceParse | None = None,
) -> Quality:
    """Quality of one face for analysis; see the module docstring for what each number means."""
    rgb = as_rgb(rgb)
    box = as_box(box, rgb.shape[1], rgb.shape[0])
    pts = scheme = None
    if landmarks is not None:
        pts = landmark_array(landmarks, ("ibug68", "mesh478"))
        scheme = landmarks.scheme
    iod = _eye_distance(pts, scheme) if pts is not None else BOX_IOD_RATIO * box.width
    crop, ox, oy = _crop(rgb, box)
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    blur = sharpness(gray)
    area, ref = _face_masks(crop.shape[:2], pts, scheme, box, (ox, oy))
    lum = gray[area] / 255.0 if area.sum() >= 20 else gray.ravel() / 255.0
    exposure = float(lum.mean())
    dark_share, bright_share = float((lum < 0.04).mean()), float((lum > 0.97).mean())
    extremity = 0.0
    if pose is not None:
        extremity = float(min(math.hypot(pose.yaw / 90.0, pose.pitch / 60.0), 1.0))
    occlusion = _parse_occlusion(parse) if parse is not None else None
    if occlusion is None:
        occlusion = _occlusion(crop, area, ref)

    reasons = []
    if iod < MIN_EYE_DISTANCE:
        reasons.append(f"face too small: {iod:.0f} px between the eyes (at least {MIN_EYE_DISTANCE:.0f} needed)")
    if blur < MIN_SHARPNESS:
        reasons.append(f"blurred: sharpness {blur:.2f} (below {MIN_SHARPNESS})")
    if exposure < DARK or dark_share > CLIP_SHARE:
        reasons.append(f"underexposed: mean face brightness {exposure:.2f}, {dark_share:.0%} of it nearly black")
    elif exposure > BRIGHT or bright_share > CLIP_SHARE:
        reasons.append(f"overexposed: mean face brightness {exposure:.2f}, {bright_share:.0%} of it nearly white")
    if extremity > MAX_POSE_EXTREMITY and pose is not None:
        reasons.append(f"extreme head pose: yaw {pose.yaw:.0f}°, pitch {pose.pitch:.0f}°")
    if occlusion > MAX_OCCLUSION:
        reasons.append(f"face partly covered: {occlusion:.0%} of the face area is not skin-coloured")

    size_score = float(np.clip((iod - 10.0) / (GOOD_EYE_DISTANCE - 10.0), 0.0, 1.0))
    exposure_score = float(np.clip(min((exposure - 0.05) / 0.25, (0.97 - exposure) / 0.2), 0.0, 1.0))
    score = size_score * min(blur / 0.6, 1.0) * exposure_score * (1.0 - 0.8 * extremity) * (1.0 - occlusion)
    return Quality(
        face_size=round(iod, 1), blur=round(blur, 3), exposure=round(exposure, 3),
        pose_extremity=round(extremity, 3), occlusion=round(occlusion, 3), score=round(float(score), 3),
        usable=not reasons, reasons=reasons,
    )


# ------------------------------------------------------------------ passport / ID photo checklist

# Limits modelled on the ICAO 9303 photo guidance, relaxed for what landmarks and pixels can measure here.
PASSPORT_MAX_YAW, PASSPORT_MAX_PITCH, PASSPORT_MAX_ROLL = 10.0, 12.0, 8.0  # degrees
PASSPORT_FACE_HEIGHT = (0.30, 0.85)  # face box height / image height
PASSPORT_MAX_OFFCENTRE = 0.15  # |face centre x - image centre x| / image width
PASSPORT_MAX_LIGHT_RATIO = 1.35  # brighter / darker half of the face (mean luminance)
PASSPORT_MIN_SHARPNESS = 0.5


def side_light_ratio(rgb: np.ndarray, box: Box) -> float:
    """Mean luminance of the brighter half of the face box over the darker half (1.0 = even)."""
    crop, _, _ = _crop(rgb, box)
    if crop.size == 0:
        return 1.0
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    h, w = gray.shape
    inner = gray[h // 5: h - h // 10, w // 8: w - w // 8]  # cheeks and eyes; less hair and background
    if inner.size == 0 or inner.shape[1] < 2:
        return 1.0
    half = inner.shape[1] // 2
    a, b = float(inner[:, :half].mean()) + 1.0, float(inner[:, half:].mean()) + 1.0
    return max(a, b) / min(a, b)


def passport_checklist(faces: list, width: int, height: int, rgb: np.ndarray) -> dict:
    """Each item of an ID-photo check with its measurement, limit and verdict (``faces``: schema ``Face``s)."""
    items: list[dict] = [{"check": "one face", "measured": len(faces), "limit": "exactly 1", "ok": len(faces) == 1}]
    if len(faces) == 1:
        f = faces[0]
        if f.pose is not None:
            p = f.pose
            ok = abs(p.yaw) <= PASSPORT_MAX_YAW and abs(p.pitch) <= PASSPORT_MAX_PITCH and abs(p.roll) <= PASSPORT_MAX_ROLL
            items.append({"check": "frontal head", "measured": f"yaw {p.yaw:+.0f}, pitch {p.pitch:+.0f}, roll {p.roll:+.0f} deg",
                          "limit": f"|yaw|<={PASSPORT_MAX_YAW:.0f}, |pitch|<={PASSPORT_MAX_PITCH:.0f}, "
                                   f"|roll|<={PASSPORT_MAX_ROLL:.0f}", "ok": ok})
        if f.cues is not None:
            c = f.cues
            closed = max(c.right_eye_closed.score, c.left_eye_closed.score)
            items.append({"check": "eyes open", "measured": f"eye-closed score {closed:.2f}", "limit": "< 0.5",
                          "ok": closed < 0.5})
            neutral = not c.smile.active and not c.mouth_open.active
            items.append({"check": "neutral expression", "measured": f"smile score {c.smile.score:.2f}, mouth-open "
                          f"score {c.mouth_open.score:.2f}", "limit": "both < 0.5", "ok": neutral})
        ratio = side_light_ratio(rgb, f.box)
        items.append({"check": "even lighting", "measured": f"left/right brightness ratio {ratio:.2f}",
                      "limit": f"<= {PASSPORT_MAX_LIGHT_RATIO}", "ok": ratio <= PASSPORT_MAX_LIGHT_RATIO})
        share = f.box.height / max(height, 1)
        lo, hi = PASSPORT_FACE_HEIGHT
        items.append({"check": "face size", "measured": f"face height {100 * share:.0f}% of the image",
                      "limit": f"{100 * lo:.0f}-{100 * hi:.0f}%", "ok": lo <= share <= hi})
        off = abs(f.box.center[0] - width / 2) / max(width, 1)
        items.append({"check": "face centred", "measured": f"{100 * off:.0f}% of the width off centre",
                      "limit": f"<= {100 * PASSPORT_MAX_OFFCENTRE:.0f}%", "ok": off <= PASSPORT_MAX_OFFCENTRE})
        if f.quality is not None:
            items.append({"check": "sharp", "measured": f"sharpness {f.quality.blur:.2f}",
                          "limit": f">= {PASSPORT_MIN_SHARPNESS}", "ok": f.quality.blur >= PASSPORT_MIN_SHARPNESS})
    failed = [i["check"] for i in items if not i["ok"]]
    return {"suitable": not failed, "failed": failed, "checks": items,
            "not_measured": "background colour, glasses glare and head covering are not checked"}
