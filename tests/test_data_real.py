"""The real face datasets' layouts (UTKFace crop_part1, FER2013 class folders, identity-only CelebA with wild
photos): the adapters on the tiny copies the repository ships (tests/fixtures/datasets, built by
datagen_fixtures.build_shipped), one `facedata` generation over all three, and checks on ../shared/data that
skip when it is absent."""

from __future__ import annotations

import json
import re
import warnings
from collections import defaultdict
from pathlib import Path

import datagen_fixtures as fx
import pytest

from facellm.data_gen.adapters import DatasetWarning, items_from_spec
from facellm.data_gen.factcheck import extract_claims
from facellm.data_gen.loader import load_records
from facellm.data_gen.pipeline import GenerateConfig, Generator
from facellm.data_gen.shortform import EXPRESSION_CLASSES, age_group_of
from facellm.data_gen.splits import split_for
from facellm.data_gen.stats import compute_stats, format_stats

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RACE_WORDS = re.compile(r"\b(White|Black|Asian|Indian|Others|Latino|Hispanic|Middle Eastern|race group)\b")


def _items(source: str, path: Path, **kw):
    skipped: list[dict] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(items_from_spec(source, path, path, skipped=skipped, **kw))
    return items, skipped, [w for w in caught if issubclass(w.category, DatasetWarning)]


# ------------------------------------------------------------------ adapters on the shipped layouts (no tools)


def test_utkface_real_layout_skips_malformed_names_with_one_warning():
    items, skipped, warned = _items("utkface", fx.SHIPPED / "utkface" / "crop_part1")
    assert len(items) == 4 and len(skipped) == 2 and len(warned) == 1
    assert "skipped 2 file(s)" in str(warned[0].message)
    assert {Path(s["file"]).name.split("_")[1] for s in skipped} == {"1", "3"}  # 61_1_..., 61_3_...
    labels = {Path(it.image_path).name: {lb.name: lb.value for _, lb in it.face_labels} for it in items}
    assert labels["35_1_0_20170109142408075.jpg.chip.jpg"] == {"age": 35, "gender": "female", "race": "White"}
    assert labels["24_0_4_20170117200930584.jpg.chip.jpg"] == {"age": 24, "gender": "male"}  # 4 = Others
    assert all(it.meta.get("tight_crop") for it in items)
    assert all(it.split == split_for(it.group) for it in items) and len({it.group for it in items}) == 4


def test_fer2013_class_folders_validation_is_test():
    items, skipped, _ = _items("fer2013", fx.SHIPPED / "fer2013")
    assert len(items) == 5 and not skipped and {it.source for it in items} == {"fer2013"}
    by_file = {it.meta["dataset_file"]: it for it in items}
    assert {k: v.face_labels[0][1].value for k, v in by_file.items()} == {
        "train/happy/Training_10000001.jpg": "happy", "train/happy/Training_10000002.jpg": "happy",
        "train/neutral/Training_10000003.jpg": "neutral", "validation/happy/PublicTest_10000004.jpg": "happy",
        "validation/neutral/PublicTest_10000005.jpg": "neutral"}
    assert all(it.face_labels[0][1].kind == "human" for it in items)
    assert {it.split for k, it in by_file.items() if k.startswith("validation/")} == {"test"}
    assert {it.split for k, it in by_file.items() if k.startswith("train/")} <= {"train", "validation"}
    assert all("parse" not in it.meta["analysis_steps"] for it in items)  # 48x48: no parser


def test_celeba_identity_only_wild_photos():
    items, _, _ = _items("celeba", fx.SHIPPED / "celeba")
    # identity_CelebA.txt names 7 images; 000099.jpg is not in this subset
    assert sorted(Path(it.image_path).name for it in items) == sorted(fx.SHIPPED_CELEBA_IDENTITIES)
    for it in items:
        name = Path(it.image_path).name
        assert it.meta["identity"] == fx.SHIPPED_CELEBA_IDENTITIES[name] and it.group == f"celeba:id:{it.meta['identity']}"
        assert [(p, lb.name, lb.kind) for p, lb in it.face_labels] == [(None, "celeba_identity", "human")]
        assert "largest" in it.meta["label_face"]
    by_group = defaultdict(set)
    for it in items:
        by_group[it.group].add(it.split)
    assert all(len(s) == 1 for s in by_group.values())  # identity-disjoint
    assert all(it.split == split_for(it.group) for it in items)


def test_split_rule():
    assert split_for("x", "validation") == "test" and split_for("x", "test") == "test"
    assert {split_for(f"g{i}", "train") for i in range(200)} == {"train", "validation"}
    got = [split_for(f"g{i}") for i in range(2000)]
    assert 0.15 < got.count("test") / 2000 < 0.25 and 0.02 < got.count("validation") / 2000 < 0.08
    assert got == [split_for(f"g{i}") for i in range(2000)]  # deterministic


# ------------------------------------------------------------------ one generation over all three


@pytest.fixture(scope="module")
def facedata(tmp_path_factory):
    out = tmp_path_factory.mktemp("facedata") / "out"
    cfg = GenerateConfig(source="facedata", path=str(fx.SHIPPED), out=out, progress=False, export_hf=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        stats = Generator(cfg).run()
    return out, stats, list(load_records(out))


def test_facedata_generation_counts_and_provenance(facedata):
    out, stats, records = facedata
    assert stats.skipped_inputs == 2 and stats.failed_units == 0
    assert len((out / "skipped_inputs.jsonl").read_text().splitlines()) == 2
    st = compute_stats(out)
    assert sum(st.skipped_inputs.values()) == 2 and "dataset files skipped" in format_stats(st)
    assert not st.leaks
    assert {"utkface", "fer2013", "celeba", "composite", "pair"} <= {r.source for r in records}
    assert {r.style for r in records} == {"fairfacegpt", "faceinstruct", "facecaption", "agent"}
    # a UTKFace crop: the human age sits beside the age model's estimate, each with its provenance
    utk = next(r for r in records if r.source == "utkface" and r.meta["dataset_file"].startswith("35_1_0"))
    assert {(lb.name, lb.value) for lb in utk.labels if lb.kind == "human"} >= {("age", 35), ("gender", "female")}
    assert any(lb.name == "perceived_age" and lb.kind == "model" for lb in utk.labels)


def test_celeba_multi_face_photo_label_goes_to_the_main_face(facedata):
    _, _, records = facedata
    rec = next(r for r in records if r.source == "celeba" and r.meta["dataset_file"].endswith("000001.jpg"))
    assert rec.faces.num_faces == 3
    cx, cy = rec.faces.image.width / 2, rec.faces.image.height / 2
    main = max(rec.faces.faces, key=lambda f: (round(f.box.area), -((f.box.center[0] - cx) ** 2 + (f.box.center[1] - cy) ** 2)))
    ident = [lb for lb in rec.labels if lb.name == "celeba_identity"]
    assert [(lb.face_id, lb.value) for lb in ident] == [(main.id, "101")]
    assert rec.meta["label_face"].startswith("the largest detected face")


def test_composites_and_pairs_are_labelled_by_construction(facedata):
    _, _, records = facedata
    comp = [r for r in records if r.source == "composite"]
    assert comp and all(r.image.path.startswith("images/composites/") for r in comp)
    for r in comp:
        made = next(lb for lb in r.labels if lb.name == "num_faces" and lb.kind == "transform")
        assert made.value == len(r.meta["members"]) == len(r.meta["tiles"])
        # built from photos of one split only
        assert len({split_for(g) if not g.startswith("fer2013") else r.split for g in r.group.split("+")}) >= 1
    pairs = [r for r in records if r.source == "pair"]
    same = {lb.value for r in pairs for lb in r.labels if lb.name == "same_person"}
    assert same == {True, False}
    for r in pairs:
        ids = {Path(m).name for m in r.meta["members"]}
        truth = len({fx.SHIPPED_CELEBA_IDENTITIES[i] for i in ids}) == 1
        assert next(lb.value for lb in r.labels if lb.name == "same_person") is truth
        assert len({split_for(f"celeba:id:{fx.SHIPPED_CELEBA_IDENTITIES[i]}") for i in ids}) == 1
    yes_no = [r for r in pairs if r.category == "verification" and r.answers()[0] in ("yes", "no")]
    for r in yes_no:
        assert (r.answers()[0] == "yes") is next(lb.value for lb in r.labels if lb.name == "same_person")


def test_short_answers_take_the_asked_form(facedata):
    _, _, records = facedata
    by_cat = defaultdict(list)
    for r in records:
        by_cat[r.category].append(r)
    for r in by_cat["age_number"]:
        assert re.fullmatch(r"\d{1,3}", r.answers()[0]), r.answers()
        human = [lb.value for lb in r.labels if lb.name == "age" and lb.kind == "human"]
        if human and r.source == "utkface":
            assert int(r.answers()[0]) == human[0]
    for r in by_cat["expression_word"]:
        if "one word" in r.questions()[0].lower():
            assert r.answers()[0] in EXPRESSION_CLASSES
    for r in by_cat["age_group"]:
        if "answer with the group" in r.questions()[0].lower():
            assert r.answers()[0] in ("child", "teen", "young adult", "middle-aged", "senior")
    assert by_cat["age_number"] and by_cat["race_refusal"]
    assert age_group_of(35) == "young adult" and age_group_of(36) == "middle-aged"


def test_no_answer_states_a_race_group(facedata):
    _, _, records = facedata
    assert any(lb.name == "race" for r in records for lb in r.labels)  # the label is kept (fairness groups)
    for r in records:
        for a in r.answers():
            assert not RACE_WORDS.search(a), a
            assert not [c for c in extract_claims(a) if c.attribute == "race"], a
    refusals = [r for r in records if r.category == "race_refusal"]
    assert refusals and all(re.search(r"race (and|or) ethnicity", r.answers()[0], re.I) for r in refusals)


# ------------------------------------------------------------------ ../shared/data (skips without it)


def _need_shared(sub: str) -> Path:
    p = SHARED / sub
    if not p.is_dir():
        pytest.skip(f"{p} is absent: the real datasets live only on the project's machine (../shared/data)")
    return p


def test_shared_utkface_listing():
    items, skipped, warned = _items("utkface", _need_shared("utkface/crop_part1"))
    assert len(skipped) == 2 and len(warned) == 1
    assert len(items) == 9278
    assert {it.split for it in items} == {"train", "validation", "test"}


def test_shared_fer2013_listing():
    items, _, _ = _items("fer2013", _need_shared("fer2013"))
    # the folder README says 17,436, but its own per-class counts (6 x 2,500 + 436 disgust) add up to 15,436
    assert sum(1 for it in items if it.meta["dataset_split"] == "train") == 15436
    test = [it for it in items if it.split == "test"]
    assert len(test) == 3589 and all(it.meta["dataset_split"] == "validation" for it in test)


def test_shared_celeba_listing_identity_disjoint():
    items, _, _ = _items("celeba", _need_shared("celeba"))
    assert len(items) == 1735 and len({it.meta["identity"] for it in items}) == 222
    by_id = defaultdict(set)
    for it in items:
        by_id[it.meta["identity"]].add(it.split)
    assert all(len(s) == 1 for s in by_id.values())


@pytest.mark.slow
def test_shared_facedata_generation_sample(tmp_path):
    root = _need_shared("")
    out = tmp_path / "out"
    cfg = GenerateConfig(source="facedata", path=str(root), out=out, limit=24, progress=False, export_hf=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        stats = Generator(cfg).run()
    records = list(load_records(out))
    assert stats.skipped_inputs == 2 and len(records) > 100
    assert not any(RACE_WORDS.search(a) for r in records for a in r.answers())
    done = json.loads((out / "DONE").read_text())
    assert done["units"] == 24


def test_factcheck_reads_scores_and_check_names_as_no_claims():
    # what the agent's passport / smile answers say about thresholds and check names claims nothing
    assert [(c.attribute, c.value) for c in extract_claims(
        "No, this person is not smiling: smile score 0.34 (0.5 or more counts as a smile).")] == [("smile", False)]
    assert extract_claims("It fails expression check (no smile, mouth closed): fails (smile 0.99, mouth open 0.00).") == []
    assert extract_claims("The person has one eye closed (or nearly): eye-closed scores 0.44 (right).") == []
    assert sorted((c.attribute, c.value) for c in extract_claims("The mouth is open and the eyes are closed.")) == [
        ("eyes_closed", True), ("mouth_open", True)]
    assert [c.attribute for c in extract_claims("The annotators labelled the race group as White.")] == ["race"]


def test_no_hair_traces_on_faces_analysed_without_the_parser(facedata):
    import random

    from facellm.data_gen.adapters import FER_STEPS
    from facellm.data_gen.agent_traces import IMAGE_ID, Trace
    from facellm.data_gen.evidence import ANALYSIS_STEPS, AnalysisCache
    from facellm.data_gen.pipeline import without_unmeasured_hair
    from facellm.tools.registry import ImageStore

    out, _, records = facedata
    fer_agent = [r for r in records if r.source == "fer2013" and r.style == "agent"]
    assert fer_agent
    assert not [r.id for r in fer_agent if any('"name": "hair"' in t.value for t in r.conversations)]
    # a real hair call on a FER face analysed without the parser: the tool sees no hair, so the trace is dropped
    path = str(fx.SHIPPED / "fer2013" / "train" / "happy" / "Training_10000001.jpg")
    fa = AnalysisCache(out / "cache" / "analysis").get(path, steps=FER_STEPS)
    tr = Trace(ImageStore({IMAGE_ID: path}, analyses={IMAGE_ID: fa}), "What colour is the hair?", random.Random(0))
    result = tr.call("hair")
    assert result["faces"][0]["hair_visible"] is False
    draft = ("hair", tr.answer("No hair region was found."), [], {}, "q", "a")
    assert without_unmeasured_hair([draft], FER_STEPS) == []
    assert without_unmeasured_hair([draft], ANALYSIS_STEPS) == [draft]
