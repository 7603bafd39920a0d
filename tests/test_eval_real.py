"""The real benchmark (eval/realbench.py): built from the held-out part of face datasets in their published layouts.

A small copy of the three layouts (UTKFace names, FER2013 class folders, identity-only CelebA) is made from the
bundled photos, with file names chosen so that data_gen's split rule holds some of them out; the tests on
``../shared/data`` skip, saying why, where that folder is absent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from facellm.data_gen.splits import split_for
from facellm.eval.categories import CATEGORIES, BuildContext, category, load_categories
from facellm.eval.items import BenchmarkError, EvalItem
from facellm.eval.realbench import RealBuildConfig, build_real_benchmark, load_real_benchmark
from facellm.tools.photos import photo

from openai_loopback import serve, tools_policy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RACE_WORDS = re.compile(r"\b(white|black|asian|indian)\b", re.I)
SMALL_CAPS = {"age": 4, "age_group": 4, "gender": 4, "expression": 4, "verification": 4, "counting": 5,
              "open_qa": 4, "tool_calling": 4}


def _names(make, want: str, n: int, start: int = 0) -> list[str]:
    """File names (or identities) whose split unit data_gen's rule puts in split ``want``."""
    out, i = [], start
    while len(out) < n:
        name, group = make(i)
        if split_for(group) == want:
            out.append(name)
        i += 1
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict:
    """UTKFace / FER2013 / CelebA layouts with held-out and training files (the photos reused across them)."""
    root = tmp_path_factory.mktemp("facedata")
    faces = [ImageOps.exif_transpose(Image.open(photo(n))).convert("RGB") for n in ("astronaut", "grace_hopper",
                                                                                    "tom_hanks")]
    utk = root / "utkface" / "crop_part1"
    utk.mkdir(parents=True)
    people = [(25, 1, 0), (81, 1, 1), (60, 0, 2), (8, 0, 3), (34, 1, 4), (45, 0, 0)]

    def utk_name(i: int, p) -> tuple[str, str]:
        name = f"{p[0]}_{p[1]}_{p[2]}_2017010{i:010d}.jpg.chip.jpg"
        return name, f"utkface:img:{name}"

    held, trained = [], []
    for k, p in enumerate(people):
        held += _names(lambda i: utk_name(i, p), "test", 1, start=1000 * k)
        trained += _names(lambda i: utk_name(i, p), "train", 1, start=1000 * k)
    for k, name in enumerate(held + trained):
        faces[k % 3].resize((200, 200)).save(utk / name)
    (utk / "61_1_20170109142408075.jpg.chip.jpg").write_bytes((utk / held[0]).read_bytes())  # a field missing
    for split, classes in (("train", ("happy",)), ("validation", ("happy", "neutral", "sad"))):
        for c in classes:
            d = root / "fer2013" / split / c
            d.mkdir(parents=True)
            for k in range(2):
                faces[k].convert("L").resize((48, 48)).save(d / f"{split}_{c}_{k}.jpg")
    celeba = root / "celeba"
    (celeba / "img_celeba").mkdir(parents=True)
    (celeba / "Anno").mkdir()
    ids_test = _names(lambda i: (str(i), f"celeba:id:{i}"), "test", 3)
    ids_train = _names(lambda i: (str(i), f"celeba:id:{i}"), "train", 1)
    lines, n = [], 0
    for k, ident in enumerate(ids_test + ids_train):
        for _ in range(2):
            n += 1
            faces[k % 3].resize((300, 300)).save(celeba / "img_celeba" / f"{n:06d}.jpg")
            lines.append(f"{n:06d}.jpg {ident}")
    (celeba / "Anno" / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "utk_test": set(held), "utk_train": set(trained), "celeba_test": set(ids_test),
            "celeba_train": set(ids_train)}


@pytest.fixture(scope="module")
def built(datasets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("realbench")
    build_real_benchmark(RealBuildConfig(data=datasets["root"], out=out, caps=SMALL_CAPS, progress=False))
    return out


def test_real_benchmark_uses_held_out_photos_only(built, datasets):
    bench = load_real_benchmark(built)
    cats = {}
    for it in bench.items:
        cats.setdefault(it.category, []).append(it)
    assert set(cats) >= {"age", "age_group", "gender", "expression", "verification", "counting", "open_qa",
                         "tool_calling"}
    utk_files = {Path(it.meta["source_key"]).name for it in bench.items if it.dataset == "utkface"}
    assert utk_files and utk_files <= datasets["utk_test"]  # never a training photo
    fer = {it.meta["source_key"] for it in bench.items if it.dataset == "fer2013"}
    assert fer and all("/validation/" in k for k in fer)  # FER2013's public test half only
    identities = {i for it in cats["verification"] for i in it.meta["identities"]}
    assert identities and identities <= datasets["celeba_test"]  # identity-disjoint
    answers = [it.reference for it in cats["verification"]]
    assert answers.count("yes") == answers.count("no")  # balanced
    assert sorted(it.reference for it in cats["counting"]) == [1, 2, 3, 4, 5]
    # short forms asked, race only as a group
    assert all(it.answer_form == "number" and "Answer with a number." in it.question for it in cats["age"])
    assert {it.answer_form for it in cats["open_qa"]} == {"free"}
    assert any("race" in it.groups and "race×gender×age_group" in it.groups for it in cats["age"])
    for it in bench.items:
        assert not RACE_WORDS.search(f"{it.question} {it.reference} {' '.join(it.keywords)}")
        assert all(e["name"] != "race" for e in it.evidence)
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["skipped_inputs"] == 1 and "lacks a field" in manifest["dataset_warnings"][0]
    assert manifest["held_out"]["fer2013"] == 6 and manifest["categories"]["age"]["items"] == len(cats["age"])


def test_real_benchmark_eval_run_with_fairness_and_forms(built, tmp_path, capsys):
    """One `facellm eval` run on the built folder: baselines and a served model, in-form column, group gaps."""
    from facellm.eval.cli import main

    out = tmp_path / "run"
    with serve(tools_policy(), model="served") as url:
        rc = main(["eval", "--benchmark", str(built), "--endpoint", url, "--baselines", "random,majority,tools",
                   "--out", str(out), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "in form %" in printed and "verification acc %" in printed and "| tools-only |" in printed
    data = json.loads((out / "results.json").read_text())
    tools = data["summary"]["tools-only"]["zero_shot"]
    assert tools["in_form"] is not None and set(tools["fairness"]) >= {"gender", "age_group", "race"}
    rows = [r for r in data["items"] if r["model"] == "tools-only" and r["attribute"] == "count"]
    assert rows and all(r["in_form"] for r in rows)  # the tools answer a count as a number
    assert any("held-out photos only" in n for n in data["notes"])


def test_real_benchmark_errors_and_registry(datasets, built, tmp_path):
    with pytest.raises(BenchmarkError, match="unknown benchmark category"):
        build_real_benchmark(RealBuildConfig(data=datasets["root"], out=tmp_path / "x", categories=["nope"],
                                             progress=False))
    with pytest.raises(BenchmarkError, match="not a built real benchmark"):
        load_real_benchmark(tmp_path)
    assert set(load_categories()) >= {"age", "verification", "tool_calling"}

    @category("test_extra", 2, "a category added by another module")
    def extra(ctx: BuildContext) -> list[EvalItem]:
        src = ctx.held_out["fer2013"][: ctx.cap("test_extra")]
        return [EvalItem(id=f"extra/{s.key}", kind="open", question="Describe the face.", images=[s.image_path],
                         category="test_extra") for s in src]

    try:
        b = build_real_benchmark(RealBuildConfig(data=datasets["root"], out=tmp_path / "extra",
                                                 categories=["test_extra"], progress=False))
        assert [it.category for it in b.items] == ["test_extra", "test_extra"]
    finally:
        CATEGORIES.pop("test_extra", None)


# ------------------------------------------------------------------ on ../shared/data (skips where absent)


@pytest.mark.slow
def test_real_benchmark_on_shared_data(tmp_path):
    if not (SHARED / "utkface").is_dir():
        pytest.skip(f"{SHARED} is absent: the real datasets live only on the development machine")
    from facellm.data_gen.adapters import facedata_items

    out = tmp_path / "bench"
    b = build_real_benchmark(RealBuildConfig(data=SHARED, out=out, caps={k: 6 for k in SMALL_CAPS}, progress=False))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["held_out"]["fer2013"] == 3589 and manifest["held_out"]["utkface"] > 1500
    assert manifest["skipped_inputs"] == 2  # the two UTKFace names with a field missing
    sources = list(facedata_items(SHARED))
    split = {it.key: it.split for it in sources}
    used = {it.meta["source_key"] for it in b.items if "source_key" in it.meta}
    used |= {k for it in b.items for k in it.meta.get("members", [])}
    assert used and all(split[k] == "test" for k in used)  # photo-disjoint from training
    train_ids = {it.meta["identity"] for it in sources if it.source == "celeba" and it.split != "test"}
    pair_ids = {i for it in b.items if it.category == "verification" for i in it.meta["identities"]}
    assert pair_ids and not pair_ids & train_ids
