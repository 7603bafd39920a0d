"""Face quality on the astronaut and on degraded copies: blur, darkness, tiny size, masks, extreme pose."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import pytest

from facellm.tools.detector import detect
from facellm.tools.dlib_backend import Dlib68Landmarker
from facellm.tools.face_inputs import FaceInputError
from facellm.tools.image_io import load_image
from facellm.tools.mesh import FaceMesher
from facellm.tools.photos import photo
from facellm.tools.pose import estimate_pose
from facellm.tools.quality import assess_quality, sharpness
from facellm.tools.schema import Box, HeadPose


@lru_cache(maxsize=1)
def astro():
    img = load_image(photo("astronaut"))
    (det,) = [d for d in detect(img) if d.box.width > 60]
    return img.rgb, det


def assess(rgb, det, landmarks: str = "mesh478"):
    lm = None
    if landmarks == "mesh478":
        lm = FaceMesher().mesh(rgb, det)
    elif landmarks == "ibug68":
        lm = Dlib68Landmarker().landmarks(rgb, det.box)
    pose = estimate_pose(lm, (rgb.shape[1], rgb.shape[0])) if lm is not None else None
    return assess_quality(rgb, det.box, lm, pose)


def masked(rgb: np.ndarray, det, colour: str) -> np.ndarray:
    """A surgical-mask texture from the insightface wheel warped over the lower face (dlib 68 points)."""
    p = np.array([q[:2] for q in Dlib68Landmarker().landmarks(rgb, det.box).points])
    top = (p[28][1] + p[29][1]) / 2
    quad = np.float32([[p[1][0], top], [p[15][0], top], [p[11][0], (p[11][1] + p[8][1]) / 2],
                       [p[5][0], (p[5][1] + p[8][1]) / 2]])
    tex = load_image(photo("mask_" + colour)).rgb
    th, tw = tex.shape[:2]
    h = cv2.getPerspectiveTransform(np.float32([[0, 0], [tw, 0], [tw, th], [0, th]]), quad)
    size = (rgb.shape[1], rgb.shape[0])
    inside = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.vstack([p[1:16], [[p[15][0], top], [p[1][0], top]]]).astype(np.int32)], 1)
    inside &= cv2.warpPerspective(np.ones((th, tw), np.uint8), h, size)
    out = rgb.copy()
    out[inside > 0] = cv2.warpPerspective(tex, h, size)[inside > 0]
    return out


@pytest.mark.parametrize("landmarks", ["mesh478", "ibug68", None])
def test_astronaut_is_usable(landmarks):
    q = assess(*astro(), landmarks)
    assert q.usable and not q.reasons, q
    assert q.blur > 0.8 and 0.4 < q.exposure < 0.8 and q.occlusion < 0.15
    assert 35 < q.face_size < 50  # ~42 px between her eye centres
    assert q.score > 0.6


def test_blur_lowers_sharpness_step_by_step():
    rgb, det = astro()
    scores = [assess(cv2.GaussianBlur(rgb, (0, 0), s) if s else rgb, det, None).blur for s in (0, 1, 2, 3, 5)]
    assert scores == sorted(scores, reverse=True) and scores[0] - scores[-1] > 0.5
    heavy = assess(cv2.GaussianBlur(rgb, (0, 0), 5), det, None)
    assert not heavy.usable and any(r.startswith("blurred") for r in heavy.reasons)


def test_sharpness_ignores_contrast():
    gray = cv2.cvtColor(astro()[0][80:180, 170:270], cv2.COLOR_RGB2GRAY)
    low = (gray.astype(np.float32) * 0.3 + 90).astype(np.uint8)
    assert sharpness(low) == pytest.approx(sharpness(gray), abs=0.05)


def test_dark_and_bright_faces_are_flagged():
    rgb, det = astro()
    dark = assess((rgb * 0.15).astype(np.uint8), det, None)
    assert not dark.usable and dark.exposure < 0.18 and any(r.startswith("underexposed") for r in dark.reasons)
    bright = assess(np.clip(rgb.astype(int) * 3, 0, 255).astype(np.uint8), det, None)
    assert not bright.usable and any(r.startswith("overexposed") for r in bright.reasons)


def test_tiny_face_is_too_small():
    rgb, det = astro()
    small = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA)
    b = det.box
    q = assess_quality(small, Box(x1=b.x1 / 4, y1=b.y1 / 4, x2=b.x2 / 4, y2=b.y2 / 4))
    assert q.face_size < 20 and not q.usable and any(r.startswith("face too small") for r in q.reasons)


@pytest.mark.parametrize("colour", ["white", "blue", "black", "green"])
def test_masked_face_reads_as_occluded(colour):
    rgb, det = astro()
    img = masked(rgb, det, colour)
    for landmarks in ("mesh478", None):
        q = assess(img, det, landmarks)
        assert q.occlusion > 0.45, (colour, landmarks, q)
        assert not q.usable and any(r.startswith("face partly covered") for r in q.reasons)


def test_real_faces_are_not_called_occluded():
    img = load_image(photo("group"))
    for d in detect(img):
        lm = FaceMesher().mesh(img.rgb, d)
        if lm.score is not None and lm.score < 0.5:
            continue
        q = assess_quality(img.rgb, d.box, lm)
        assert q.occlusion < 0.45, (d.box, q)


def test_extreme_pose_is_a_reason():
    rgb, det = astro()
    q = assess_quality(rgb, det.box, pose=HeadPose(yaw=80, pitch=0, roll=0, direction="in profile", source="t"))
    assert q.pose_extremity > 0.8 and any(r.startswith("extreme head pose") for r in q.reasons)


def test_bad_inputs():
    rgb, det = astro()
    with pytest.raises(FaceInputError):
        assess_quality(rgb, Box(x1=-50, y1=-50, x2=-10, y2=-10))
    with pytest.raises(FaceInputError):
        assess_quality(rgb.astype(np.float32), det.box)
