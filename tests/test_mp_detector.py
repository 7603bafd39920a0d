"""The MediaPipe BlazeFace backend (through LiteRT) on the real bundled photos."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from facellm.tools.detector import detect
from facellm.tools.image_io import load_image
from facellm.tools.mp_detector import (
    FULL_RANGE,
    KEYPOINT_NAMES,
    SHORT_RANGE,
    MediaPipeDetector,
    RawDetections,
    ssd_anchors,
    tile_plan,
    weighted_nms,
)
from facellm.tools.photos import photo
from facellm.tools.schema import Box

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "photos.json").read_text())


@pytest.fixture(scope="module")
def det() -> MediaPipeDetector:
    return MediaPipeDetector()


@pytest.fixture(scope="module")
def rgb() -> dict[str, np.ndarray]:
    return {n: load_image(photo(n)).rgb for n in ("astronaut", "group", "grace_hopper", "tom_hanks", "camera")}


def _contains(box: Box, point, grow: float = 1.3) -> bool:
    b = box.scaled(grow)
    return b.x1 <= point[0] <= b.x2 and b.y1 <= point[1] <= b.y2


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


# --- decoding pieces ------------------------------------------------------------------------------------
def test_anchors_match_the_models_outputs():
    short, full = ssd_anchors(SHORT_RANGE.anchors), ssd_anchors(FULL_RANGE.anchors)
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # short range: 16x16 cells with 2 anchors, then 8x8 cells with 6; centres at cell middles
    assert np.allclose(short[0], [0.5 / 16, 0.5 / 16]) and np.allclose(short[1], short[0])
    assert np.allclose(short[512], [0.5 / 8, 0.5 / 8]) and np.allclose(short[512:518], short[512])
    assert np.allclose(full[1], [1.5 / 48, 0.5 / 48]) and np.allclose(full[-1], [47.5 / 48, 47.5 / 48])


def test_weighted_nms_averages_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    pts = np.zeros((3, 6, 2), np.float32)
    pts[1] += 3.0
    raw = RawDetections(boxes, pts, np.array([0.9, 0.3, 0.8], np.float32), np.zeros(3, np.int8))
    out = weighted_nms(raw)
    assert len(out.scores) == 2
    assert out.scores[0] == pytest.approx(0.9)  # the cluster keeps its best score
    assert np.allclose(out.boxes[0], [0.25, 0.25, 10.25, 10.25])  # score-weighted mean: 0.9 / 0.3
    assert np.allclose(out.points[0], 0.75)
    assert np.allclose(out.boxes[1], boxes[2])


def test_tile_plan_covers_the_image_at_every_level():
    levels = tile_plan(1920, 1080, 24)
    assert len(levels[0]) == 1 and levels[0][0].size == 1920  # the whole image, letterboxed
    assert len(levels) >= 3
    fine = levels[-1]
    assert fine[0].size == pytest.approx(24 * 192 / 16)
    for level in levels[1:]:
        cover = np.zeros((1080, 1920), bool)
        for t in level:
            cover[max(0, int(t.y0)) : int(t.y0 + t.size), max(0, int(t.x0)) : int(t.x0 + t.size)] = True
        assert cover.all()
    assert len(tile_plan(640, 480, None)) == 1
    assert len(tile_plan(100, 80, 24)) == 1  # small images need no tiles


# --- real photos ----------------------------------------------------------------------------------------
def test_group_photo_has_exactly_six_faces_left_to_right(rgb):
    dets = detect(rgb["group"])  # through the registry: default backend, default min_score
    assert len(dets) == 6, [d.box for d in dets]
    people = FIXTURE["group"]["people"]
    for d, p in zip(dets, people):
        assert _contains(d.box, p["center"]), (d.box, p["center"])
        assert d.score >= 0.8
        assert d.source.startswith("mediapipe-blazeface")
    xs = [d.box.center[0] for d in dets]
    assert xs == sorted(xs)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper", "tom_hanks", "camera"])
def test_single_face_photos(det, rgb, name):
    dets = det.detect(rgb[name], 0.5)
    assert len(dets) == 1, [d.box for d in dets]
    assert _contains(dets[0].box, FIXTURE[name]["people"][0]["center"])


def test_astronaut_box_and_key_points(det, rgb):
    (d,) = det.detect(rgb["astronaut"], 0.5)
    # checked by eye on the photo: the box spans brows to chin, ear to ear
    assert 160 < d.box.x1 < 195 and 60 < d.box.y1 < 95 and 255 < d.box.x2 < 290 and 155 < d.box.y2 < 190
    assert [k.name for k in d.keypoints] == list(KEYPOINT_NAMES)
    kp = {k.name: (k.x, k.y) for k in d.keypoints}
    xs = [kp[n][0] for n in ("right_ear_tragion", "right_eye", "nose_tip", "left_eye", "left_ear_tragion")]
    assert xs == sorted(xs)
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = d.kpts5
    assert rx < nx < lx and mrx < kp["mouth_center"][0] < mlx
    assert max(ry, ly) < ny < min(mry, mly)
    assert d.kpts5[0] == kp["right_eye"] and d.kpts5[2] == kp["nose_tip"]
    # estimated mouth corners: about 0.83 x the eye distance apart, centred on the mouth centre
    assert (mlx - mrx) == pytest.approx(0.83 * (lx - rx), rel=0.05)


def _variants(x: np.ndarray) -> dict[str, tuple[np.ndarray, callable]]:
    h, w = x.shape[:2]
    gray = np.repeat(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return {  # image, and where an original point (x, y) lands in it
        "rot90": (np.rot90(x, 1), lambda p: (p[1], w - p[0])),
        "rot180": (np.rot90(x, 2), lambda p: (w - p[0], h - p[1])),
        "rot270": (np.rot90(x, 3), lambda p: (h - p[1], p[0])),
        "mirror": (x[:, ::-1], lambda p: (w - p[0], p[1])),
        "gray": (gray, lambda p: p),
        "jpeg10": (_jpeg(x, 10), lambda p: p),
    }


@pytest.mark.parametrize("variant", ["rot90", "rot180", "rot270", "mirror", "gray", "jpeg10"])
def test_astronaut_survives_rotation_mirroring_gray_and_jpeg(det, rgb, variant):
    img, where = _variants(rgb["astronaut"])[variant]
    dets = det.detect(np.ascontiguousarray(img), 0.5)
    assert len(dets) == 1, [d.box for d in dets]
    assert _contains(dets[0].box, where(FIXTURE["astronaut"]["people"][0]["center"]))
    if variant in ("rot90", "rot180", "rot270"):
        # the eyes keep their anatomical names: the right eye is where the original's right eye went
        (orig,) = det.detect(rgb["astronaut"], 0.5)
        iod = np.hypot(*np.subtract(orig.kpts5[1], orig.kpts5[0]))
        assert np.hypot(*np.subtract(dets[0].kpts5[0], where(orig.kpts5[0]))) < 0.3 * iod


def test_turned_group_photo_still_has_six_faces(det, rgb):
    dets = det.detect(np.ascontiguousarray(np.rot90(rgb["group"], 1)), 0.5)
    assert len(dets) == 6


NON_FACES = ["coffee", "rocket", "chelsea", "hubble_deep_field", "coins", "logo", "colorwheel", "text", "clock"]


def test_no_faces_in_non_face_images(det):
    for name in NON_FACES:
        dets = det.detect(load_image(getattr(skimage.data, name)()).rgb, 0.5)
        assert dets == [], (name, [(d.score, d.box) for d in dets])
    for name in ("mask_white", "mask_black", "mask_blue", "mask_green"):
        assert det.detect(load_image(photo(name)).rgb, 0.5) == [], name


def test_verification_is_what_rejects_textures():
    stars = load_image(skimage.data.hubble_deep_field()).rgb
    plain = MediaPipeDetector(verify=False, rotations="never")
    assert len(plain.detect(stars, 0.5)) >= 3  # BlazeFace alone sees faces in a star field
    assert MediaPipeDetector(rotations="never").detect(stars, 0.5) == []


def _face_crops(det, rgb) -> list[tuple[np.ndarray, float]]:
    """Face crops (1.8 x the detector box) from the photos, with the face's share of the crop width."""
    out = []
    for name in ("astronaut", "grace_hopper", "group"):
        for d in det.detect(rgb[name], 0.5):
            b = d.box.scaled(1.8).clipped(rgb[name].shape[1], rgb[name].shape[0])
            crop = rgb[name][int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)]
            out.append((crop, d.box.width / b.width))
    return out


def _small_face_canvas(det, rgb, sizes):
    rng = np.random.default_rng(7)
    canvas = cv2.resize(skimage.data.coffee(), (1920, 1080), interpolation=cv2.INTER_LINEAR)
    crops = _face_crops(det, rgb)
    truth = []
    for i, size in enumerate(sizes):
        crop, share = crops[i % len(crops)]
        scale = size / (crop.shape[1] * share)
        c = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        cx, cy = (i % 4) * 480, (i // 4) * 540  # one face per cell: no overlaps
        x0, y0 = cx + int(rng.integers(10, 480 - c.shape[1] - 10)), cy + int(rng.integers(10, 540 - c.shape[0] - 10))
        canvas[y0 : y0 + c.shape[0], x0 : x0 + c.shape[1]] = c
        truth.append(Box(x1=x0, y1=y0, x2=x0 + c.shape[1], y2=y0 + c.shape[0]).scaled(1 / 1.8))
    return canvas, truth


def test_small_faces_in_a_full_hd_photo(det, rgb):
    sizes = [26, 28, 30, 32, 34, 36, 38, 40]
    canvas, truth = _small_face_canvas(det, rgb, sizes)
    dets = det.detect(canvas, 0.5)
    found = [any(d.box.iou(t) > 0.3 for d in dets) for t in truth]
    assert sum(found) >= 7, list(zip(sizes, found))
    assert all(any(d.box.iou(t) > 0.3 for t in truth) for d in dets), "false positive on the background"
    # the tiled pass is what finds them: whole-image passes alone see few of them
    whole_only = MediaPipeDetector(min_face=None).detect(canvas, 0.5)
    assert len(whole_only) <= 2


def test_bad_inputs_give_clear_errors_or_nothing(det):
    assert det.detect(np.zeros((1, 1, 3), np.uint8), 0.5) == []
    assert det.detect(np.zeros((480, 640, 3), np.uint8), 0.5) == []
    assert det.detect(np.full((3, 700, 3), 255, np.uint8), 0.5) == []
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((10, 10), np.uint8), 0.5)
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((10, 10, 3), np.float32), 0.5)
    with pytest.raises(ValueError, match="min_score"):
        det.detect(np.zeros((10, 10, 3), np.uint8), 1.5)
    with pytest.raises(ValueError, match="rotations"):
        MediaPipeDetector(rotations="sometimes")
    with pytest.raises(ValueError, match="min_face"):
        MediaPipeDetector(min_face=-3)


def test_one_detector_serves_several_threads(det, rgb):
    from concurrent.futures import ThreadPoolExecutor

    names = ["astronaut", "group", "grace_hopper", "group"]
    expected = {n: [d.box.as_list() for d in det.detect(rgb[n], 0.5)] for n in set(names)}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda n: [d.box.as_list() for d in det.detect(rgb[n], 0.5)], names))
    for n, boxes in zip(names, got):
        assert np.allclose(boxes, expected[n]), n
