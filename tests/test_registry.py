"""The tool registry: OpenAI schemas derived from it, argument validation, and every tool run on real photos
through an ImageStore (cached analyses, stable face ids, plain errors)."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageOps

from facellm.tools.gallery import Gallery
from facellm.tools.photos import photo
from facellm.tools.registry import (REGISTRY, TOOL_NAMES, ImageStore, ToolError, ToolSpec, get_tool, openai_tools,
                                    result_json, run_tool)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("registry")
    mirrored = folder / "astronaut_mirror.png"
    ImageOps.mirror(Image.open(photo("astronaut"))).save(mirrored)
    gallery = Gallery(folder / "gallery.sqlite")
    gallery.enroll("Test Person", photo("astronaut"))
    return ImageStore({"image_1": photo("astronaut"), "image_2": photo("group"), "image_3": mirrored,
                       "image_4": photo("grace_hopper")}, gallery=gallery)


def test_openai_schema_is_derived_from_the_registry():
    tools = openai_tools()
    assert [t["function"]["name"] for t in tools] == list(TOOL_NAMES) == list(REGISTRY)
    for t in tools:
        fn = t["function"]
        assert t["type"] == "function" and len(fn["description"]) > 30
        params = fn["parameters"]
        assert params["type"] == "object" and "properties" in params
        text = json.dumps(params)
        assert "$ref" not in text and "$defs" not in text and "title" not in text and "anyOf" not in text
    face = REGISTRY["pose"].parameters()
    assert face["required"] == ["image"] and face["properties"]["face_id"] == {
        "description": "face number (1 = leftmost face); omit for every face", "minimum": 1, "type": "integer"}
    verify = REGISTRY["verify"].parameters()
    assert set(verify["required"]) == {"image_a", "image_b"}
    assert [t["function"]["name"] for t in openai_tools(["pose", "detect"])] == ["pose", "detect"]
    with pytest.raises(ToolError, match="unknown tool 'age'; the tools are: detect"):
        openai_tools(["age"])


def test_estimates_are_labelled_in_descriptions():
    assert "not facts" in REGISTRY["attributes"].description
    assert "only way to name anyone" in REGISTRY["identify"].description


@pytest.mark.parametrize("args, message", [
    ({}, "image: Field required"),
    ({"image": "image_1", "face_id": 0}, "face_id: Input should be greater than or equal to 1"),
    ({"image": "image_1", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
])
def test_bad_arguments_are_plain_tool_errors(store, args, message):
    with pytest.raises(ToolError, match=message.replace("(", r"\(")):
        run_tool("pose", args, store)


def test_unknown_tool_and_image(store):
    with pytest.raises(ToolError, match="unknown tool"):
        run_tool("age_guess", {"image": "image_1"}, store)
    with pytest.raises(ToolError, match="unknown image 'image_9'; the images in this conversation are: image_1"):
        run_tool("detect", {"image": "image_9"}, store)
    assert issubclass(ToolError, ValueError)


def test_detect_on_the_group_photo(store):
    r = run_tool("detect", '{"image": "image_2"}', store)  # JSON text arguments, as a model writes them
    assert r["num_faces"] == 6 and r["image_size"] == [1280, 886]
    xs = [f["box"][0] for f in r["faces"]]
    assert xs == sorted(xs) and [f["face_id"] for f in r["faces"]] == [1, 2, 3, 4, 5, 6]
    assert r["faces"][0]["position"].endswith("left") and r["faces"][-1]["position"].endswith("right")
    assert json.loads(result_json(r)) == r and " " not in result_json({"a": 1, "b": [1, 2]})


def test_per_face_tools_and_face_numbers(store):
    one = run_tool("expression", {"image": "image_2", "face_id": 4}, store)
    assert one["num_faces"] == 6 and [f["face_id"] for f in one["faces"]] == [4]
    assert one["faces"][0]["expression"]["kind"] == "model estimate"
    assert "source" not in one["faces"][0]["expression"] and "expression" in one["sources"]  # hoisted once
    with pytest.raises(ToolError, match="there is no face 7: this image has 6 face"):
        run_tool("pose", {"image": "image_2", "face_id": 7}, store)


def test_astronaut_measurements_match_the_photo(store):
    """By eye: one frontal, smiling woman (see tests/fixtures/photos.json)."""
    a = run_tool("analyze", {"image": "image_1"}, store)
    assert a["num_faces"] == 1
    f = a["faces"][0]
    assert f["cues"]["smile"]["active"] is True and f["expression"]["value"] == "happy"
    assert f["pose"]["direction"] == "frontal" and f["pose"]["kind"] == "model estimate"
    assert f["perceived_age"]["kind"] == "model estimate" and f["quality"]["usable"] is True
    assert {"skin", "nose", "hair"} <= set(f["visible_regions"])
    lm = run_tool("landmarks", {"image": "image_1"}, store)["faces"][0]["landmarks"]
    assert set(lm["kpts5"]) == {"right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner"}
    assert lm["kpts5"]["right_eye"][0] < lm["kpts5"]["left_eye"][0]  # subject's right eye is on the image left
    assert 25 < lm["inter_ocular_px"] < 70 and lm["schemes"]["mesh478"]
    parse = run_tool("parse", {"image": "image_1"}, store)["faces"][0]["parse"]
    assert 30 < parse["region_share_percent"]["skin"] < 95
    q = run_tool("quality", {"image": "image_1"}, store)["faces"][0]["quality"]
    assert 0 <= q["score"] <= 1 and q["reasons"] == []
    attrs = run_tool("attributes", {"image": "image_1"}, store)["faces"][0]
    lo, hi = attrs["perceived_age"]["range"]
    assert lo <= attrs["perceived_age"]["value"] <= hi


def test_analyses_are_cached_and_reused(store):
    first = store.analysis("image_4")
    assert store.analysis("image_4") is first  # no second run for the same steps
    run_tool("pose", {"image": "image_4"}, store)
    assert store.analysis("image_4") is first
    # a precomputed analysis handed to a new store is used as is (data_gen passes its cached ones)
    other = ImageStore({"image_1": photo("grace_hopper")}, analyses={"image_1": first})
    assert other.analysis("image_1") is first
    with pytest.raises(ToolError, match="not in the store"):
        ImageStore({}, analyses={"image_1": first})
    assert other.add(photo("astronaut")) == "image_2" and other.ids == ["image_1", "image_2"]


def test_verify_mirror_same_person_and_different_people(store):
    same = run_tool("verify", {"image_a": "image_1", "image_b": "image_3"}, store)
    assert same["same_person"] is True and same["distance"] < same["threshold"]
    diff = run_tool("verify", {"image_a": "image_1", "image_b": "image_4"}, store)
    assert diff["same_person"] is False and diff["kind"] == "model estimate"
    two = run_tool("verify", {"image_a": "image_2", "image_b": "image_2", "face_a": 1, "face_b": 6}, store)
    assert (two["face_a"], two["face_b"]) == (1, 6) and two["same_person"] is False


def test_identify_names_only_enrolled_people(store):
    known = run_tool("identify", {"image": "image_3"}, store)["faces"][0]  # the mirrored enrolled photo
    assert known["known"] is True and known["name"] == "Test Person"
    unknown = run_tool("identify", {"image": "image_4", "top_k": 2}, store)
    assert unknown["faces"][0]["known"] is False and unknown["faces"][0]["name"] == "unknown"
    assert "only from the enrolled gallery" in unknown["note"]
    with pytest.raises(ToolError, match="no face gallery is configured"):
        run_tool("identify", {"image": "image_1"}, ImageStore({"image_1": photo("astronaut")}))


def test_no_face_image(store):
    s = ImageStore({"image_1": photo("mask_blue")})
    assert run_tool("detect", {"image": "image_1"}, s)["num_faces"] == 0
    assert run_tool("pose", {"image": "image_1"}, s)["faces"] == []
    with pytest.raises(ToolError, match="no face was found"):
        run_tool("pose", {"image": "image_1", "face_id": 1}, s)
    with pytest.raises(ToolError, match="no face was found"):
        run_tool("verify", {"image_a": "image_1", "image_b": "image_1"}, s)


def test_toolspec_is_the_public_unit():
    spec = get_tool("pose")
    assert isinstance(spec, ToolSpec) and spec.openai() == openai_tools(["pose"])[0]
    args = spec.validate({"image": "image_1", "face_id": 2})
    assert args.face_id == 2


# ------------------------------------------------------------------ tools for the common asks (issue 17)


def test_position_argument_picks_one_face(store):
    left = run_tool("pose", {"image": "image_2", "position": "left"}, store)
    right = run_tool("pose", {"image": "image_2", "position": "right"}, store)
    assert [f["face_id"] for f in left["faces"]] == [1]
    assert [f["face_id"] for f in right["faces"]] == [right["num_faces"]] == [6]
    top_right = run_tool("attributes", {"image": "image_2", "position": "top right"}, store)["faces"][0]
    assert top_right["face_id"] == 5  # the man near the top, right of centre in t1.jpg
    with pytest.raises(ToolError, match="either face_id or position"):
        run_tool("pose", {"image": "image_2", "position": "left", "face_id": 2}, store)
    with pytest.raises(ToolError, match="bad arguments"):
        run_tool("pose", {"image": "image_2", "position": "upstairs"}, store)


def test_rank_orders_faces(store):
    r = run_tool("rank", {"image": "image_2", "by": "age"}, store)
    values = [o["value"] for o in r["order"]]
    assert len(values) == 6 and values == sorted(values, reverse=True)
    assert r["highest"] == r["order"][0]["face_id"] and r["lowest"] == r["order"][-1]["face_id"]
    smile = run_tool("rank", {"image": "image_2", "by": "smile"}, store)
    assert smile["order"][0]["face_id"] in (3, 4)  # the two laughing men in the middle
    eyes = run_tool("rank", {"image": "image_2", "by": "eyes_open"}, store)
    assert {o["face_id"] for o in eyes["order"][-3:]} == {1, 4, 6}  # nearly closed eyes rank last


def test_gaze_and_passport_and_hair(store):
    g = run_tool("gaze", {"image": "image_4"}, store)["faces"][0]["gaze"]
    assert g["looking_at_camera"] is True and abs(g["yaw"]) < 10  # Grace Hopper faces the camera
    group = run_tool("gaze", {"image": "image_2", "position": "top left"}, store)["faces"][0]["gaze"]
    assert group["looking_at_camera"] is False  # face 2 turns her head away (yaw ~ -33)
    solo = run_tool("passport", {"image": "image_4"}, store)
    names = [c["check"] for c in solo["checks"]]
    assert names[:2] == ["one face", "frontal head"] and "even lighting" in names and "face size" in names
    assert all({"measured", "limit", "ok"} <= set(c) for c in solo["checks"])
    assert solo["suitable"] == (not solo["failed"])
    many = run_tool("passport", {"image": "image_2"}, store)
    assert many["suitable"] is False and many["failed"] == ["one face"]
    hair = run_tool("hair", {"image": "image_2", "position": "right"}, store)["faces"][0]
    assert hair["hair_visible"] and hair["hair_colour"] in ("blond", "light brown")  # the fair-haired woman


def test_observation_is_compact_and_keeps_the_answer(store):
    from facellm.tools.registry import observation, observation_json

    r = run_tool("expression", {"image": "image_2"}, store)
    obs = observation(r)
    assert len(observation_json(r)) < 0.6 * len(result_json(r))
    f = obs["faces"][2]
    assert "box" not in f and "source" not in json.dumps(obs) and "kind" not in json.dumps(obs)
    assert f["cues"]["smile"] == r["faces"][2]["cues"]["smile"]["score"]  # cue -> its score
    assert observation({"error": "there is no face 9"}) == {"error": "there is no face 9"}
