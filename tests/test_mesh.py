"""The 478-point MediaPipe mesh through LiteRT, and the named landmark groups, on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from facellm.tools.dlib_backend import Dlib68Landmarker
from facellm.tools.image_io import load_image
from facellm.tools.landmark_groups import (
    IBUG68,
    MESH478,
    LandmarkGroupError,
    group_array,
    groups,
    kpts5_from,
)
from facellm.tools.mesh import FaceMesher, MeshInputError, Roi
from facellm.tools.mp_detector import MediaPipeDetector
from facellm.tools.photos import photo
from facellm.tools.schema import Box, Landmarks

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "photos.json").read_text())
POLYGON_GROUPS = ["right_eye", "left_eye", "right_brow", "left_brow", "nose", "upper_lip", "lower_lip",
                  "mouth_outer", "mouth_inner", "face_oval", "forehead"]


@pytest.fixture(scope="module")
def mesher() -> FaceMesher:
    return FaceMesher()


@pytest.fixture(scope="module")
def detector() -> MediaPipeDetector:
    return MediaPipeDetector()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {n: load_image(photo(n)).rgb for n in ("astronaut", "group", "grace_hopper")}


@pytest.fixture(scope="module")
def astro(mesher, detector, photos):
    (det,) = detector.detect(photos["astronaut"], 0.5)
    return det, mesher.mesh(photos["astronaut"], det)


def _pts(lm: Landmarks) -> np.ndarray:
    return np.array(lm.points, dtype=np.float64)


def _inside(polygon: np.ndarray, point, tol: float = 1.0) -> bool:
    return cv2.pointPolygonTest(polygon.astype(np.float32), (float(point[0]), float(point[1])), True) >= -tol


def test_astronaut_mesh_lands_on_the_face(astro):
    det, lm = astro
    assert lm.scheme == "mesh478" and len(lm.points) == 478 and lm.source.startswith("mediapipe")
    assert lm.score is not None and lm.score > 0.9
    p = _pts(lm)
    grown = det.box.scaled(1.6)
    assert ((p[:, 0] > grown.x1) & (p[:, 0] < grown.x2) & (p[:, 1] > grown.y1) & (p[:, 1] < grown.y2)).all()
    assert det.box.x1 < p[4, 0] < det.box.x2 and det.box.y1 < p[4, 1] < det.box.y2  # nose tip in the box
    # z is in pixels: the nose tip is nearer the camera than the cheeks' edge, by a face-like depth
    assert p[4, 2] < p[234, 2] and p[4, 2] < p[454, 2]
    assert 0.1 * det.box.width < p[234, 2] - p[4, 2] < 1.0 * det.box.width


def test_irises_sit_inside_their_eyes(astro):
    _, lm = astro
    p = _pts(lm)
    right, left = p[MESH478["right_eye"], :2], p[MESH478["left_eye"], :2]
    assert _inside(right, p[468]) and _inside(left, p[473])
    assert p[468, 0] < p[473, 0]  # subject's right iris on the image left
    for centre, ring in ((468, range(469, 473)), (473, range(474, 478))):
        radius = np.linalg.norm(p[list(ring), :2] - p[centre, :2], axis=1)
        eye_width = np.linalg.norm(p[33, :2] - p[133, :2])
        assert (radius > 0.1 * eye_width).all() and (radius < 0.5 * eye_width).all()


def test_mesh_agrees_with_dlib_68_points(mesher, detector, photos):
    lm68 = Dlib68Landmarker()
    for name in ("astronaut", "grace_hopper"):
        (det,) = detector.detect(photos[name], 0.5)
        mesh = _pts(mesher.mesh(photos[name], det))
        ib = _pts(lm68.landmarks(photos[name], det.box))
        iod = np.linalg.norm(ib[36:42].mean(0) - ib[42:48].mean(0))
        pairs = {4: 30, 61: 48, 291: 54, 152: 8, 33: 36, 263: 45, 133: 39, 362: 42}
        for m, i in pairs.items():
            assert np.linalg.norm(mesh[m, :2] - ib[i]) < 0.25 * iod, (name, m, i)


def test_six_meshes_on_the_group_photo(mesher, detector, photos):
    dets = detector.detect(photos["group"], 0.5)
    meshes = mesher.mesh_all(photos["group"], dets)
    assert len(meshes) == 6
    for d, lm in zip(dets, meshes):
        p = _pts(lm)
        assert lm.score > 0.9
        assert d.box.x1 < p[4, 0] < d.box.x2 and d.box.y1 < p[4, 1] < d.box.y2
        centre = p[:468, :2].mean(0)
        assert d.box.scaled(1.2).x1 < centre[0] < d.box.scaled(1.2).x2


def test_a_plain_box_gives_the_same_mesh(mesher, astro, photos):
    det, lm = astro
    from_box = _pts(mesher.mesh(photos["astronaut"], det.box))
    p = _pts(lm)
    iod = np.linalg.norm(p[468, :2] - p[473, :2])
    assert np.median(np.linalg.norm(from_box[:, :2] - p[:, :2], axis=1)) < 0.05 * iod


def test_turned_and_mirrored_faces_keep_their_anatomy(mesher, detector, astro, photos):
    _, lm = astro
    p = _pts(lm)
    iod = np.linalg.norm(p[468, :2] - p[473, :2])
    img = photos["astronaut"]
    h, w = img.shape[:2]
    # turned 90 degrees counter-clockwise: (x, y) -> (y, w - x)
    turned = np.ascontiguousarray(np.rot90(img, 1))
    (d,) = detector.detect(turned, 0.5)
    q = _pts(mesher.mesh(turned, d))
    expected = np.stack([p[:, 1], w - p[:, 0]], axis=1)
    assert np.median(np.linalg.norm(q[:, :2] - expected, axis=1)) < 0.1 * iod
    # mirrored: the subject's right eye of the mirror image is the original's left eye, mirrored
    mirrored = np.ascontiguousarray(img[:, ::-1])
    (d,) = detector.detect(mirrored, 0.5)
    q = _pts(mesher.mesh(mirrored, d))
    assert np.linalg.norm(q[468, :2] - [w - p[473, 0], p[473, 1]]) < 0.15 * iod
    assert q[468, 0] < q[473, 0]


def test_presence_is_low_where_there_is_no_face(mesher):
    coffee = skimage.data.coffee()
    lm = mesher.mesh(coffee, Box(x1=200, y1=100, x2=350, y2=250))
    assert lm.score < 0.5
    scores = mesher.presence(coffee, [Roi(300, 200, 200, 0.0), Roi(100, 100, 120, 0.3)])
    assert (scores < 0.5).all()


def test_mesh_bad_inputs(mesher):
    img = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(MeshInputError, match="empty"):
        mesher.mesh(img, Box(x1=10, y1=10, x2=10, y2=50))
    with pytest.raises(MeshInputError, match="outside"):
        mesher.mesh(img, Box(x1=200, y1=200, x2=300, y2=300))
    with pytest.raises(MeshInputError, match="too small"):
        mesher.mesh(np.zeros((1, 1, 3), np.uint8), Box(x1=0, y1=0, x2=1, y2=1))
    with pytest.raises(MeshInputError, match="uint8"):
        mesher.mesh(img.astype(np.float32), Box(x1=10, y1=10, x2=60, y2=60))
    assert mesher.mesh_all(img, []) == []
    black = mesher.mesh(img, Box(x1=10, y1=10, x2=60, y2=60))  # no face: a mesh with a low score
    assert len(black.points) == 478 and black.score < 0.5


# --- landmark groups -------------------------------------------------------------------------------------
def _check_anatomy(g: dict[str, list], scheme: str) -> None:
    c = {k: np.array(v).mean(0) for k, v in g.items()}
    assert c["right_eye"][0] < c["left_eye"][0]  # subject's right on the image left (frontal face)
    assert c["right_brow"][0] < c["left_brow"][0]
    assert c["right_brow"][1] < c["right_eye"][1] and c["left_brow"][1] < c["left_eye"][1]
    assert max(c["right_eye"][1], c["left_eye"][1]) < c["nose"][1] < c["upper_lip"][1] < c["lower_lip"][1]
    assert c["right_eye"][0] < c["nose"][0] < c["left_eye"][0]
    assert c["upper_lip"][1] < c["mouth_inner"][1] < c["lower_lip"][1]
    assert np.array(g["jaw"])[:, 1].max() > c["lower_lip"][1]
    if scheme == "mesh478":
        assert c["right_iris"][0] < c["left_iris"][0]
        assert c["forehead"][1] < min(c["right_brow"][1], c["left_brow"][1])
        assert np.array(g["face_oval"])[:, 1].min() < c["forehead"][1]


def test_mesh_groups_are_anatomically_right(astro):
    _, lm = astro
    g = groups(lm)
    assert set(g) == set(MESH478)
    _check_anatomy(g, "mesh478")
    for name in POLYGON_GROUPS:  # polygons in drawing order: fillable, not self-cancelling
        assert cv2.contourArea(np.array(g[name], np.float32)) > 5, name
    # the eyes' own polygons hold their iris centres, the mouth outline holds the inner lip contour
    assert _inside(group_array(lm, "right_eye"), g["right_iris"][0])
    assert all(_inside(group_array(lm, "mouth_outer"), p, 2.0) for p in g["mouth_inner"])
    # the face oval holds every feature group
    oval = group_array(lm, "face_oval")
    for name in ("right_eye", "left_eye", "nose", "upper_lip", "lower_lip"):
        assert all(_inside(oval, p) for p in g[name]), name


def test_ibug68_groups_are_anatomically_right(photos, astro):
    det, _ = astro
    lm = Dlib68Landmarker().landmarks(photos["astronaut"], det.box)
    g = groups(lm)
    assert set(g) == set(IBUG68)
    _check_anatomy(g, "ibug68")


def test_kpts5_from_each_scheme(astro, photos):
    det, lm = astro
    k_mesh = np.array(kpts5_from(lm))
    p = _pts(lm)
    assert np.allclose(k_mesh, p[[468, 473, 4, 61, 291], :2])
    k_68 = np.array(kpts5_from(Dlib68Landmarker().landmarks(photos["astronaut"], det.box)))
    iod = np.linalg.norm(k_mesh[1] - k_mesh[0])
    assert (np.linalg.norm(k_mesh - k_68, axis=1) < 0.25 * iod).all()
    five = Landmarks(scheme="five", points=[tuple(v) for v in k_mesh], source="test")
    assert np.allclose(kpts5_from(five), k_mesh)
    assert set(groups(five)) == {"right_eye", "left_eye", "nose", "mouth_outer"}
    # a mesh without irises (468 points) still gives eye centres and every non-iris group
    bare = Landmarks(scheme="mesh478", points=lm.points[:468], source="test")
    assert "right_iris" not in groups(bare) and "forehead" in groups(bare)
    assert np.linalg.norm(np.array(kpts5_from(bare)[0]) - k_mesh[0]) < 0.2 * iod


def test_groups_reject_wrong_landmark_sets():
    with pytest.raises(LandmarkGroupError, match="68"):
        groups(Landmarks(scheme="ibug68", points=[(0.0, 0.0)] * 67, source="test"))
    with pytest.raises(LandmarkGroupError, match="finite"):
        groups(Landmarks(scheme="five", points=[(float("nan"), 0.0)] * 5, source="test"))
