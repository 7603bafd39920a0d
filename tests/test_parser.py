"""Face parsing from the 478-point mesh plus selfie segmentation, on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from facellm.tools.image_io import load_image
from facellm.tools.mesh import FaceMesher
from facellm.tools.mp_detector import MediaPipeDetector
from facellm.tools.parser import (
    LABELS,
    PALETTE,
    FaceParser,
    ParseInputError,
    decode_label_map,
    encode_rle,
    palette_array,
)
from facellm.tools.photos import photo
from facellm.tools.schema import FaceParse, Landmarks


@pytest.fixture(scope="module")
def parser() -> FaceParser:
    return FaceParser()


@pytest.fixture(scope="module")
def faces() -> dict[str, tuple[np.ndarray, list, list[Landmarks]]]:
    det, mesher = MediaPipeDetector(), FaceMesher()
    out = {}
    for name in ("astronaut", "grace_hopper", "group"):
        rgb = load_image(photo(name)).rgb
        dets = det.detect(rgb, 0.5)
        out[name] = (rgb, dets, mesher.mesh_all(rgb, dets))
    return out


@pytest.fixture(scope="module")
def astro(parser, faces) -> FaceParse:
    rgb, dets, meshes = faces["astronaut"]
    return parser.parse(rgb, meshes[0], dets[0].box)


def _centroid(label_map: np.ndarray, parse: FaceParse, name: str) -> np.ndarray:
    ys, xs = np.nonzero(label_map == parse.labels.index(name))
    return np.array([xs.mean() + parse.box.x1, ys.mean() + parse.box.y1])


def test_astronaut_regions_are_sane(astro, faces):
    p = astro
    assert p.labels == LABELS
    areas = {k: v.area for k, v in p.regions.items()}
    for name in LABELS[1:]:
        assert areas.get(name, 0) > 0, name  # every region, hair and open mouth included
    assert areas["skin"] == max(areas.values())
    assert areas["nose"] > areas["right_eye"] and areas["skin"] > 10 * areas["nose"]
    # eyes of similar size on a frontal face
    assert 0.6 < areas["right_eye"] / areas["left_eye"] < 1.6
    rgb = faces["astronaut"][0]
    b = p.box
    assert b.x1 == int(b.x1) and b.y1 == int(b.y1)
    assert 0 <= b.x1 < b.x2 <= rgb.shape[1] and 0 <= b.y1 < b.y2 <= rgb.shape[0]
    assert p.size == (int(b.y2 - b.y1), int(b.x2 - b.x1))


def test_astronaut_regions_are_where_they_belong(astro, faces):
    p = astro
    lm = decode_label_map(p)
    mesh = np.array(faces["astronaut"][2][0].points)
    c = {name: _centroid(lm, p, name) for name in LABELS[1:]}
    assert c["right_eye"][0] < c["nose"][0] < c["left_eye"][0]
    assert c["right_brow"][1] < c["right_eye"][1] < c["nose"][1] < c["upper_lip"][1] < c["lower_lip"][1]
    assert c["upper_lip"][1] < c["mouth_interior"][1] < c["lower_lip"][1]
    assert c["hair"][1] < c["right_brow"][1]  # her hair is above the face
    assert np.linalg.norm(c["right_eye"] - mesh[468, :2]) < 6  # the eye region is around the iris
    # polygons are in image pixels and enclose the region's centroid for convex-ish regions
    poly = np.array(p.regions["nose"].polygons[0])
    assert poly[:, 0].min() < c["nose"][0] < poly[:, 0].max()


def test_label_map_round_trip(astro):
    lm = decode_label_map(astro)
    assert lm.shape == astro.size and lm.dtype == np.uint8
    assert encode_rle(lm) == [tuple(r) for r in astro.rle]
    for name, stats in astro.regions.items():
        assert int((lm == LABELS.index(name)).sum()) == stats.area
    again = FaceParse.model_validate_json(astro.model_dump_json())
    assert np.array_equal(decode_label_map(again), lm)
    bad = astro.model_copy(update={"rle": astro.rle[:-1]})
    with pytest.raises(ParseInputError, match="run lengths"):
        decode_label_map(bad)


def test_open_mouth_versus_closed_mouth(parser, faces, astro):
    # fixture: the astronaut smiles with teeth showing, Grace Hopper's mouth is closed
    rgb, _, meshes = faces["grace_hopper"]
    grace = parser.parse(rgb, meshes[0])
    ratio = lambda p: p.regions.get("mouth_interior").area / p.regions["skin"].area  # noqa: E731
    assert ratio(astro) > 2 * ratio(grace)


def test_group_photo_parses_all_six_faces_in_one_call(parser, faces):
    rgb, dets, meshes = faces["group"]
    parses = parser.parse_all(rgb, meshes + [None], [d.box for d in dets] + [None])
    assert len(parses) == 7 and parses[-1] is None
    for d, p in zip(dets, parses[:6]):
        lm = decode_label_map(p)
        skin = _centroid(lm, p, "skin")
        assert d.box.x1 < skin[0] < d.box.x2 and d.box.y1 - 0.3 * d.box.height < skin[1] < d.box.y2
        assert p.regions["right_eye"].area > 0 and p.regions["left_eye"].area > 0
    assert sum("hair" in p.regions for p in parses[:6]) >= 5


def test_palette_covers_every_label():
    assert set(PALETTE) == set(LABELS)
    pal = palette_array()
    assert pal.shape == (len(LABELS), 3) and len({tuple(c) for c in pal}) == len(LABELS)


def test_parser_bad_inputs(parser, faces):
    rgb, _, meshes = faces["astronaut"]
    with pytest.raises(ParseInputError, match="mesh478"):
        parser.parse(rgb, Landmarks(scheme="ibug68", points=[(0.0, 0.0)] * 68, source="test"))
    with pytest.raises(ParseInputError, match="uint8"):
        parser.parse(rgb.astype(np.float32), meshes[0])
    with pytest.raises(ParseInputError, match="too small"):
        parser.parse(np.zeros((1, 1, 3), np.uint8), meshes[0])
    with pytest.raises(ParseInputError, match="outside"):
        far = Landmarks(scheme="mesh478", points=[(x + 5000, y, z) for x, y, z in meshes[0].points], source="t")
        parser.parse(rgb, far)
    # a black image with the astronaut's mesh: polygons still rasterise, no hair, no crash
    black = parser.parse(np.zeros_like(rgb), meshes[0])
    assert black.regions["skin"].area > 0 and "hair" not in black.regions
    assert parser.parse_all(rgb, []) == []
