"""The pure-PyTorch MTCNN cascade on the real bundled photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facellm.tools.assets import asset_path
from facellm.tools.detector import detect
from facellm.tools.image_io import load_image
from facellm.tools.mtcnn import MTCNNDetector, ONet, PNet, RNet, nms
from facellm.tools.photos import photo

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "photos.json").read_text())


@pytest.fixture(scope="module")
def mtcnn() -> MTCNNDetector:
    return MTCNNDetector()


@pytest.mark.parametrize("net, key", [(PNet, "mtcnn_pnet"), (RNet, "mtcnn_rnet"), (ONet, "mtcnn_onet")])
def test_modules_match_the_weight_files_exactly(net, key):
    sd = torch.load(asset_path(key), weights_only=True)
    assert set(net().state_dict()) == set(sd)
    net().load_state_dict(sd, strict=True)


def test_finds_the_six_faces_of_the_group_photo_in_order():
    dets = detect(photo("group"), backend="mtcnn")  # registry default min_score 0.9
    people = FIXTURE["group"]["people"]
    assert len(dets) == len(people)
    for d, p in zip(dets, people):
        b = d.box.scaled(1.3)
        assert b.x1 <= p["center"][0] <= b.x2 and b.y1 <= p["center"][1] <= b.y2, (d.box, p["center"])
        assert d.source == "mtcnn" and d.score >= 0.9


def test_five_points_are_in_our_order(mtcnn):
    rgb = load_image(photo("astronaut")).rgb
    (d,) = mtcnn.detect(rgb, 0.9)
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = d.kpts5
    assert rx < nx < lx and mrx < mlx  # subject's right eye / mouth corner on the image left
    assert max(ry, ly) < ny < min(mry, mly)
    assert all(d.box.x1 <= x <= d.box.x2 and d.box.y1 <= y <= d.box.y2 for x, y in d.kpts5)
    assert abs(d.box.center[0] - 222) < 20 and abs(d.box.center[1] - 125) < 30


@pytest.mark.parametrize("name, n", [("grace_hopper", 1), ("camera", 1), ("mask_white", 0), ("mask_blue", 0)])
def test_face_counts(mtcnn, name, n):
    assert len(mtcnn.detect(load_image(photo(name)).rgb, 0.9)) == n


def test_min_face_sets_where_the_pyramid_starts():
    fine, coarse = MTCNNDetector(min_face=20), MTCNNDetector(min_face=60)
    assert len(coarse._scales(886, 1280)) < len(fine._scales(886, 1280))
    # every face in the group photo is ~100 px, so the shorter pyramid still finds all six
    assert len(coarse.detect(load_image(photo("group")).rgb, 0.9)) == 6
    with pytest.raises(ValueError):
        MTCNNDetector(min_face=8)
    # a 12 MP photo starts its pyramid at the 1.5 MP cap, not at 12 / 20 of its size
    first = fine._scales(3000, 4000)[0]
    assert 3000 * 4000 * first**2 == pytest.approx(1_500_000, rel=1e-6)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], dtype=float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    assert list(nms(boxes, scores, 0.5)) == [3, 1, 2]  # box 3 is small: IoU with box 1 is only 0.16
    assert list(nms(boxes, scores, 0.5, mode="min")) == [3, 2]  # boxes 0 and 1 wholly contain box 3
    assert len(nms(np.zeros((0, 4)), np.zeros(0), 0.5)) == 0


def test_bad_and_tiny_inputs(mtcnn):
    with pytest.raises(ValueError):
        mtcnn.detect(np.zeros((50, 50), np.uint8))
    assert mtcnn.detect(np.zeros((8, 8, 3), np.uint8), 0.0) == []
    assert mtcnn.detect(np.full((100, 120, 3), 128, np.uint8), 0.0) == []
