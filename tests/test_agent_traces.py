"""Agent traces on real photos: only registry tools with valid arguments, the agent's own prompt format,
many phrasings, face targeting that resolves to the face the question means, and follow-ups."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from facellm.data_gen.agent_phrasings import casual, typo
from facellm.data_gen.agent_traces import IMAGE_ID, agent_drafts, gallery_for, OFFLINE_GALLERY, user_text
from facellm.toolcall import parse_tool_calls, parse_tool_responses
from facellm.tools.analyze import analyze
from facellm.tools.photos import photo
from facellm.tools.registry import REGISTRY, get_tool


@pytest.fixture(scope="module")
def drafts(tmp_path_factory):
    gallery = gallery_for(tmp_path_factory.mktemp("g"), OFFLINE_GALLERY)
    fas = {n: analyze(photo(n)) for n in ("group", "grace_hopper", "astronaut")}
    out = []
    for seed in range(14):
        for n, fa in fas.items():
            partner = "astronaut" if n != "astronaut" else "grace_hopper"
            out += [(n, d) for d in agent_drafts(str(photo(n)), fa, random.Random(seed), gallery=gallery,
                                                 per_image=3, partner=(str(photo(partner)), fas[partner]))]
    return out


def test_calls_name_real_tools_with_valid_arguments(drafts):
    calls = 0
    for _, d in drafts:
        for t in d.turns:
            if t.from_ != "gpt":
                continue
            parsed = parse_tool_calls(t.value)
            assert not parsed.errors
            for c in parsed.tool_calls:
                assert c.name in REGISTRY, c.name
                get_tool(c.name).validate(c.arguments)  # raises on a bad argument
                calls += 1
        assert d.turns[-1].from_ == "gpt" and not parse_tool_calls(d.turns[-1].value).tool_calls
    assert calls >= len(drafts)


def test_user_turns_are_written_as_the_agent_sends_them(drafts):
    two = [d for _, d in drafts if len(d.images) == 2]
    assert two, "no two-image trace"
    for _, d in drafts:
        first = d.turns[0].value
        n = len(d.images)
        assert first == user_text(d.question, [f"image_{k + 1}" for k in range(n)], [f"image_{k + 1}" for k in range(n)])
        for t in d.turns[1:]:
            if t.from_ == "human":  # follow-ups add no image
                assert t.value.startswith("Images in this conversation: ") and "<image>" not in t.value
    assert all('"image_b": "image_2"' in d.turns[1].value for d in two if d.category == "same_person")


def test_many_intents_and_phrasings(drafts):
    cats = Counter(d.category for _, d in drafts)
    assert len(cats) >= 15, cats
    questions = {d.question for _, d in drafts}
    assert len(questions) >= 0.7 * len(drafts)
    assert any(len([t for t in d.turns if t.from_ == "human"]) == 2 for _, d in drafts)  # follow-ups
    multi = [d for _, d in drafts if sum(1 for t in d.turns if t.from_ == "tool") >= 2 and d.category != "follow_up"]
    assert multi, "no multi-step trace"


def test_targeted_questions_resolve_to_the_face_meant(drafts):
    """A call with position=X returns the face that _by_position picks; the answer names that face."""
    seen = 0
    for n, d in drafts:
        if n != "group":
            continue
        for k, t in enumerate(d.turns):
            calls = parse_tool_calls(t.value).tool_calls if t.from_ == "gpt" else []
            if calls and "position" in calls[0].arguments:
                (res,) = parse_tool_responses(d.turns[k + 1].value)
                fid = res["faces"][0]["face_id"]
                pos = calls[0].arguments["position"]
                if pos == "left":
                    assert fid == 1
                if pos == "right":
                    assert fid == 6
                nxt = next(x.value for x in d.turns[k + 2:] if x.from_ == "gpt")
                if not parse_tool_calls(nxt).tool_calls:
                    assert f"face {fid}" in nxt.lower(), nxt
                seen += 1
    assert seen >= 3


def test_observations_are_compact(drafts):
    for _, d in drafts:
        for t in d.turns:
            if t.from_ == "tool":
                text = json.dumps(parse_tool_responses(t.value))
                assert '"box"' not in text and '"source"' not in text and '"kind"' not in text


def test_refusals_never_name_unmatched_people(drafts):
    for n, d in drafts:
        if n == "group":  # nobody in the group photo is enrolled
            assert "Dana Whitfield" not in d.answer and "Margaret Ellison" not in d.answer


def test_typos_and_casual_forms():
    rng = random.Random(0)
    q = "How many people are in the picture?"
    typos = {typo(q, rng) for _ in range(30)}
    assert len(typos) > 5 and all(len(x) in range(len(q) - 1, len(q) + 2) for x in typos)
    forms = {casual(q, random.Random(s)) for s in range(60)}
    assert q in forms and any(f.islower() for f in forms) and len(forms) > 5
