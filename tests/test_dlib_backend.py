"""dlib HOG / CNN detectors and 5 / 68-point shape predictors on the real bundled photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from facellm.tools.detector import detect
from facellm.tools.dlib_backend import (
    CNN_TAU,
    HOG_TAU,
    Dlib5Landmarker,
    Dlib68Landmarker,
    DlibCNNDetector,
    DlibHOGDetector,
    box_from_kpts5,
    margin_from_score,
    score_from_margin,
)
from facellm.tools.image_io import load_image
from facellm.tools.photos import photo

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "photos.json").read_text())


@pytest.fixture(scope="module")
def hog() -> DlibHOGDetector:
    return DlibHOGDetector()


@pytest.fixture(scope="module")
def rgb() -> dict[str, np.ndarray]:
    return {n: load_image(photo(n)).rgb for n in ("astronaut", "group", "grace_hopper", "mask_white", "camera")}


def _match_fixture(dets, name):
    """Every fixture face centre lies in exactly one detection box (grown 1.3x), in left-to-right order."""
    people = FIXTURE[name]["people"]
    assert len(dets) == len(people), [d.box for d in dets]
    for d, p in zip(sorted(dets, key=lambda d: d.box.center[0]), people):
        b = d.box.scaled(1.3)
        assert b.x1 <= p["center"][0] <= b.x2 and b.y1 <= p["center"][1] <= b.y2, (d.box, p["center"])


def _kpts_are_anatomical(d):
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = d.kpts5
    assert rx < nx < lx  # subject's right eye on the image left
    assert mrx < mlx
    assert max(ry, ly) < ny < min(mry, mly)  # eyes, then nose, then mouth, going down (upright faces)
    b = d.box.scaled(1.2)
    assert all(b.x1 <= x <= b.x2 and b.y1 <= y <= b.y2 for x, y in d.kpts5)


def test_hog_finds_the_six_faces_of_the_group_photo(rgb):
    dets = detect(rgb["group"], backend="dlib-hog")  # through the registry, with its default min_score
    _match_fixture(dets, "group")
    for d in dets:
        assert d.source == "dlib-hog" and 0 < d.score <= 1
        _kpts_are_anatomical(d)
        assert [k.name for k in d.keypoints] == ["right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left"]


def test_hog_finds_one_face_on_the_astronaut_and_none_on_a_mask(hog, rgb):
    dets = hog.detect(rgb["astronaut"], 0.0)
    _match_fixture(dets, "astronaut")
    _kpts_are_anatomical(dets[0])
    assert dets[0].score > 0.7  # a clear frontal face
    assert hog.detect(rgb["mask_white"], 0.0) == []


def test_hog_min_score_filters_by_the_documented_margin(hog, rgb):
    raw = sorted(s for _, s, _ in hog.raw_detect(rgb["group"]))
    mid = (raw[0] + raw[1]) / 2
    kept = hog.detect(rgb["group"], score_from_margin(mid, HOG_TAU))
    assert len(kept) == len(raw) - 1


def test_hog_on_a_huge_image_is_downscaled_and_mapped_back(hog, rgb):
    big = cv2.resize(rgb["group"], None, fx=2.5, fy=2.5, interpolation=cv2.INTER_LINEAR)  # 7 MP > 2 MP budget
    dets = hog.detect(big, 0.0)
    people = FIXTURE["group"]["people"]
    assert len(dets) == len(people)
    for d, p in zip(sorted(dets, key=lambda d: d.box.center[0]), people):
        cx, cy = d.box.center
        assert abs(cx / 2.5 - p["center"][0]) < 40 and abs(cy / 2.5 - p["center"][1]) < 50
        assert 200 < d.box.width < 350  # ~100 px faces, x2.5


def test_small_and_bad_inputs(hog):
    assert hog.detect(np.zeros((10, 10, 3), np.uint8), 0.0) == []
    with pytest.raises(ValueError):
        hog.detect(np.zeros((64, 64, 3), np.float32), 0.0)
    with pytest.raises(ValueError):
        hog.detect(np.zeros((64, 64), np.uint8), 0.0)
    with pytest.raises(ValueError):
        hog.detect(np.zeros((64, 64, 3), np.uint8), 1.0)  # scores never reach 1


def test_score_mapping_is_monotone_and_inverts():
    assert score_from_margin(0.0, HOG_TAU) == 0.0 and score_from_margin(-1.0, HOG_TAU) == 0.0
    xs = [0.1, 0.5, 1.0, 2.0, 3.0]
    ys = [score_from_margin(x, CNN_TAU) for x in xs]
    assert ys == sorted(ys) and all(0 < y < 1 for y in ys)
    for x in xs:
        assert margin_from_score(score_from_margin(x, HOG_TAU), HOG_TAU) == pytest.approx(x)


def test_cnn_finds_the_six_faces_and_the_camera_man(rgb):
    cnn = DlibCNNDetector()  # shrinks the group photo to its 0.7 MP budget (~3-4 s on 2 cores)
    dets = cnn.detect(rgb["group"], 0.3)
    _match_fixture(dets, "group")
    assert all(d.source == "dlib-cnn" and d.score > 0.8 for d in dets)
    # a near-profile face HOG misses (a smaller budget keeps this test quick: ~80 px face at 1.07x)
    (d,) = DlibCNNDetector(max_pixels=300_000).detect(rgb["camera"], 0.3)
    cx, cy = d.box.center
    assert abs(cx - 220) < 25 and abs(cy - 150) < 25


def test_68_points_lie_in_the_face_box(hog, rgb):
    lm = Dlib68Landmarker()
    for d in hog.detect(rgb["group"], 0.0):
        res = lm.landmarks(rgb["group"], d.box)
        assert res.scheme == "ibug68" and len(res.points) == 68 and res.source == "dlib-shape-predictor-68"
        pts = np.array(res.points)

        def inside(p, b):
            return bool(((p[:, 0] >= b.x1) & (p[:, 0] <= b.x2) & (p[:, 1] >= b.y1) & (p[:, 1] <= b.y2)).all())

        # brows, eyes, nose and mouth inside the box; the jaw line may run a little past HOG's tight box
        assert inside(pts[17:], d.box.scaled(1.1)) and inside(pts, d.box.scaled(1.5))
        # iBUG order: jaw 0-16 runs image-left to image-right, eyes above the mouth, nose tip in between
        assert pts[0, 0] < pts[16, 0]
        assert pts[36:48, 1].mean() < pts[30, 1] < pts[48:68, 1].mean()
        assert pts[36:42, 0].mean() < pts[42:48, 0].mean()


def test_68_points_from_another_detectors_kpts5_agree(hog, rgb):
    # the kpts5 route rebuilds a HOG-style box; the points should barely move
    lm = Dlib68Landmarker()
    (d,) = hog.detect(rgb["astronaut"], 0.0)
    a = np.array(lm.landmarks(rgb["astronaut"], d.box).points)
    b = np.array(lm.landmarks(rgb["astronaut"], d.box, kpts5=d.kpts5).points)
    assert np.median(np.linalg.norm(a - b, axis=1)) < 0.05 * d.box.width


def test_kpts5_box_matches_hog_boxes(hog, rgb):
    for name in ("group", "astronaut", "grace_hopper"):
        for d in hog.detect(rgb[name], 0.0):
            assert box_from_kpts5(d.kpts5).iou(d.box) > 0.6
    with pytest.raises(ValueError):
        box_from_kpts5([(1, 1)] * 5)


def test_5_point_order_is_eye_corners_then_nose(hog, rgb):
    (d,) = hog.detect(rgb["astronaut"], 0.0)
    p = Dlib5Landmarker().points(rgb["astronaut"], d.box)
    # [0, 1] the subject's left eye (image right), [2, 3] their right eye, [4] the base of the nose
    assert p[2, 0] < p[3, 0] < p[4, 0] < p[1, 0] < p[0, 0]
    assert p[4, 1] > p[:4, 1].max()
    right, left = Dlib5Landmarker().eye_centres(rgb["astronaut"], d.box)
    # eye centres from the corners agree with the 68-point model's within a few pixels
    assert np.hypot(right[0] - d.kpts5[0][0], right[1] - d.kpts5[0][1]) < 4
    assert np.hypot(left[0] - d.kpts5[1][0], left[1] - d.kpts5[1][1]) < 4
