"""How faces and perceived ages are worded for people: every face of a photo gets its own position word, and an
age range that is one year wide is not printed as "28-28"."""

from __future__ import annotations

import pytest

from facellm.tools.registry import age_range_words, position_words
from facellm.tools.schema import Box, Face


def _face(fid: int, cx: float, cy: float = 300.0, half: float = 20.0) -> Face:
    return Face(id=fid, box=Box(x1=cx - half, y1=cy - half, x2=cx + half, y2=cy + half), score=0.9,
                kpts5=[(cx, cy)] * 5, detector="test")


W, H = 900, 600


def _words(xs: list[float]) -> list[str]:
    faces = [_face(i + 1, x) for i, x in enumerate(xs)]
    return [position_words(f, W, H, faces) for f in faces]


def test_a_lone_face_is_placed_by_thirds_of_the_frame():
    assert position_words(_face(1, 450, 300), W, H) == "centre"
    assert position_words(_face(1, 100, 80), W, H) == "top left"
    assert position_words(_face(1, 800, 550), W, H, [_face(1, 800, 550)]) == "bottom right"


def test_two_faces_in_the_middle_third_are_told_apart():
    # both centres in the middle third: by thirds both were "centre"
    assert _words([400, 500]) == ["left", "right"]


@pytest.mark.parametrize("n", range(2, 13))
def test_every_face_of_a_photo_gets_its_own_word(n: int):
    words = _words([300 + 25 * i for i in range(n)])  # a tight row in the middle of the frame
    assert len(set(words)) == n, words
    assert words[0] == "left" and words[-1] == "right"


def test_words_follow_the_place_from_the_left_not_the_face_ids():
    faces = [_face(1, 700), _face(2, 100), _face(3, 400)]  # ids deliberately not in left-to-right order
    assert [position_words(f, W, H, faces) for f in faces] == ["right", "left", "centre"]


def test_a_group_of_six_reads_from_both_ends():
    assert _words([100, 250, 400, 550, 700, 850]) == [
        "left", "second from the left", "third from the left", "third from the right", "second from the right",
        "right"]


def test_age_range_words():
    assert age_range_words(27, 32) == "27-32 years"
    assert age_range_words(28, 28) is None  # a one-year interval: say the value alone
    assert age_range_words(27.6, 28.4) is None
