"""analyze(): the whole chain on real photos, checked against the by-eye fixture file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facellm.tools.analyze import analyze, resolve_steps
from facellm.tools.image_io import load_image
from facellm.tools.photos import photo
from facellm.tools.schema import FaceAnalysis

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "photos.json").read_text())


@pytest.fixture(scope="module")
def group() -> FaceAnalysis:
    return analyze(photo("group"))


@pytest.fixture(scope="module")
def astronaut() -> FaceAnalysis:
    return analyze(photo("astronaut"))


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper", "camera", "group", "mask_white", "mask_black",
                                  "mask_blue", "mask_green"])
def test_face_counts_match_the_fixture(name):
    res = analyze(photo(name), steps=())
    assert res.num_faces == FIXTURE[name]["faces"], name


def test_group_faces_are_where_the_fixture_says_in_order(group):
    people = FIXTURE["group"]["people"]
    assert [f.id for f in group.faces] == list(range(1, len(people) + 1))
    for f, p in zip(group.faces, people):
        cx, cy = f.box.center
        # each fixture centre lies inside its face's box (grown a little for hairline / chin guesses)
        b = f.box.scaled(1.3)
        assert b.x1 <= p["center"][0] <= b.x2 and b.y1 <= p["center"][1] <= b.y2, (f.id, f.box, p["center"])


def test_every_face_gets_every_default_step(group):
    for f in group.faces:
        assert f.mesh478 is not None and len(f.mesh478.points) == 478
        assert f.lmk68 is not None and len(f.lmk68.points) == 68
        assert f.parse is not None and f.pose is not None and f.cues is not None
        assert f.attributes is not None and f.expression is not None and f.quality is not None
        assert {"right_eye", "left_eye", "nose"} <= set(f.groups)
        assert f.embedding is None  # identity work asks for it explicitly
        # the kpts5 come from the mesh and lie inside the face box
        b = f.box.scaled(1.2)
        assert all(b.x1 <= x <= b.x2 and b.y1 <= y <= b.y2 for x, y in f.kpts5)


def test_visible_smiles_are_measured(group, astronaut):
    assert astronaut.faces[0].cues.smile.active
    assert astronaut.faces[0].expression.value == "happy"
    # the two men in the middle laugh / smile with teeth showing (fixture faces 3 and 4)
    assert group.face(3).cues.smile.active and group.face(4).cues.smile.active
    assert group.face(4).expression.value == "happy"


def test_json_round_trip(group):
    text = group.to_json()
    back = FaceAnalysis.from_json(text)
    assert back == group
    assert json.loads(text)["num_faces"] == 6


def test_steps_resolve_dependencies():
    assert resolve_steps(["cues"]) == ("mesh", "landmarks68", "pose", "cues")  # dlib's lids: the closed-eye cue
    with pytest.raises(ValueError, match="unknown analysis step"):
        resolve_steps(["telepathy"])
    res = analyze(photo("astronaut"), steps=["pose"])
    f = res.faces[0]
    assert f.pose is not None and f.mesh478 is not None and f.attributes is None and f.parse is None


def test_many_faces_in_one_photo():
    """24 real faces (crops of the test photos, some mirrored) tiled 6 x 4 on a 1920 x 1080 canvas."""
    group = Image.open(photo("group")).convert("RGB")
    crops = [group.crop(b) for b in [(20, 230, 200, 430), (245, 100, 420, 290), (440, 220, 620, 420),
                                     (715, 290, 890, 490), (880, 30, 1060, 230), (1080, 230, 1270, 430)]]
    crops += [Image.open(photo("astronaut")).convert("RGB").crop((120, 20, 330, 250)),
              Image.open(photo("grace_hopper")).convert("RGB").crop((130, 90, 400, 380))]
    canvas = Image.new("RGB", (1920, 1080), (90, 90, 90))
    for i in range(24):
        c = crops[i % len(crops)].resize((250, 250))
        if i >= len(crops):
            c = c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if (i // len(crops)) % 2 else c
        canvas.paste(c, (30 + (i % 6) * 315, 15 + (i // 6) * 265))
    res = analyze(np.asarray(canvas), steps=("pose",))
    assert res.num_faces >= 22, res.num_faces
    assert [f.id for f in res.faces] == list(range(1, res.num_faces + 1))
    capped = analyze(np.asarray(canvas), steps=(), max_faces=5)
    assert capped.num_faces == 5 and capped.warnings


def test_grayscale_and_heavy_jpeg_still_analysed(tmp_path):
    img = Image.open(photo("astronaut"))
    img.convert("L").save(tmp_path / "gray.jpg", quality=8)
    res = analyze(tmp_path / "gray.jpg")
    assert res.num_faces == 1 and res.image.mode == "L"
    assert res.faces[0].pose is not None and abs(res.faces[0].pose.yaw) < 25


def test_no_face_gives_empty_result():
    res = analyze(load_image(np.full((480, 640, 3), 127, np.uint8)))
    assert res.num_faces == 0 and res.faces == []
