"""Head pose by PnP: sign conventions on synthetic projections, mirrored and rotated real photos."""

from __future__ import annotations

import math
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
from facellm.tools.pose import (IBUG_TO_MESH, MESH_RIGID, angles_from_rotation, canonical_points, direction_words,
                                estimate_pose)
from facellm.tools.schema import Landmarks


@lru_cache(maxsize=1)
def mesher() -> FaceMesher:
    return FaceMesher()


def poses(rgb: np.ndarray, scheme: str = "mesh478"):
    """(box centre x, pose) of every face found, left to right."""
    out = []
    for d in detect(rgb):
        lm = mesher().mesh(rgb, d) if scheme == "mesh478" else Dlib68Landmarker().landmarks(rgb, d.box)
        if lm.score is not None and lm.score < 0.5:
            continue
        out.append((d.box.center[0], estimate_pose(lm, (rgb.shape[1], rgb.shape[0]))))
    return out


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = (math.radians(v) for v in (-yaw, -pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def _synthetic(yaw: float, pitch: float, roll: float, scheme: str) -> Landmarks:
    """Project the canonical face, turned by known angles, with a camera of focal length = image width."""
    canon = canonical_points()
    w = h = 640
    rot = _rot(yaw, pitch, roll)
    n = 478 if scheme == "mesh478" else 68
    pts = np.zeros((n, 2))
    idx = {i: i for i in MESH_RIGID} if scheme == "mesh478" else IBUG_TO_MESH
    for i, m in idx.items():
        p = rot @ canon[m] + [0, 0, 600.0]  # 60 cm in front of the camera, on the optical axis
        pts[i] = [w * p[0] / p[2] + w / 2, w * p[1] / p[2] + h / 2]
    return Landmarks(scheme=scheme, points=[tuple(p) for p in pts], source="synthetic")


@pytest.mark.parametrize("scheme", ["mesh478", "ibug68"])
@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (-30, 0, 0), (0, 20, 0), (0, -20, 0), (0, 0, 25),
                                    (25, -15, 10), (-60, 10, -5)])
def test_recovers_known_angles_with_schema_signs(scheme, angles):
    pose = estimate_pose(_synthetic(*angles, scheme), (640, 640))
    assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx(angles, abs=1.0)


def test_angle_decomposition_round_trips():
    for a in [(10, 20, 30), (-40, 5, -15), (70, -30, 5)]:
        assert angles_from_rotation(_rot(*a)) == pytest.approx(a, abs=1e-6)


def test_astronaut_is_frontal_with_both_schemes():
    rgb = load_image(photo("astronaut")).rgb
    for scheme in ("mesh478", "ibug68"):
        (_, p), = [t for t in poses(rgb, scheme) if 150 < t[0] < 300]
        assert abs(p.yaw) < 8 and abs(p.roll) < 8 and abs(p.pitch) < 15, (scheme, p)
        assert p.direction == "frontal"
        assert "solvePnP" in p.source


def test_mirroring_flips_yaw_and_roll():
    rgb = load_image(photo("group")).rgb
    w = rgb.shape[1]
    orig = poses(rgb)
    mirr = {round(w - x): p for x, p in poses(np.ascontiguousarray(rgb[:, ::-1]))}
    turned = 0
    for x, p in orig:
        q = min(mirr.items(), key=lambda t: abs(t[0] - x))[1]
        if abs(p.yaw) > 12:  # faces clearly turned: the sign must flip
            turned += 1
            assert np.sign(q.yaw) == -np.sign(p.yaw) and abs(q.yaw + p.yaw) < 12, (x, p, q)
        if abs(p.roll) > 12:
            assert np.sign(q.roll) == -np.sign(p.roll), (x, p, q)
    assert turned >= 3


@pytest.mark.parametrize("ccw", [15, -15, 30])
def test_rotating_the_image_changes_roll(ccw):
    rgb = load_image(photo("astronaut")).rgb
    (_, base), = [t for t in poses(rgb) if 150 < t[0] < 300]
    m = cv2.getRotationMatrix2D((256, 256), ccw, 1.0)  # OpenCV: positive angle = counter-clockwise
    turned = cv2.warpAffine(rgb, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
    p = max(poses(turned), key=lambda t: -abs(t[1].yaw))[1]
    # counter-clockwise in the image = towards the subject's right shoulder = negative roll
    assert p.roll - base.roll == pytest.approx(-ccw, abs=5)
    assert abs(p.yaw - base.yaw) < 5


def test_cameraman_turned_to_his_left():
    (_, p), = poses(load_image(photo("camera")).rgb)
    assert p.yaw > 30 and "their left" in p.direction


def test_group_heads_turn_as_seen():
    by_x = poses(load_image(photo("group")).rgb)
    top_right = [p for x, p in by_x if 880 < x < 1050][0]  # turned to the image left (his right)
    assert top_right.yaw < -25 and "to their right" in top_right.direction
    laughing = [p for x, p in by_x if 700 < x < 850][0]  # head down
    assert laughing.pitch < -10 and "looking down" in laughing.direction


def test_direction_words():
    assert direction_words(0, 0, 0) == "frontal"
    assert direction_words(20, 0, 0) == "turned to their left"
    assert direction_words(-50, 0, 0) == "turned far to their right"
    assert direction_words(80, 0, 0).startswith("in profile")
    assert direction_words(0, 20, 0) == "looking up"
    assert direction_words(0, -20, 18) == "looking down, tilted towards their left shoulder"


def test_bad_landmarks():
    with pytest.raises(FaceInputError):
        estimate_pose(Landmarks(scheme="five", points=[(0, 0)] * 5, source="x"), (100, 100))
    with pytest.raises(FaceInputError):
        estimate_pose(Landmarks(scheme="ibug68", points=[(0, 0)] * 60, source="x"), (100, 100))
    with pytest.raises(FaceInputError):
        estimate_pose(Landmarks(scheme="ibug68", points=[(5.0, 5.0)] * 68, source="x"), (100, 100))
    with pytest.raises(FaceInputError):
        estimate_pose(_synthetic(0, 0, 0, "ibug68"), (0, 100))
