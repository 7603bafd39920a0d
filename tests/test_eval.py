"""facellm.eval: answer parsing, FaceXBench loader (fixture in the real layout), built-in benchmark from records,
runs against a real OpenAI-compatible server on loopback and a tiny FaceLLM in-process, cache/resume, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from facellm.data_gen.evidence import compact, file_sha256, model_labels
from facellm.data_gen.schema import ImageRef, Record, human, turn
from facellm.eval.answers import Judge, age_error, extract_attribute, extract_choice, rubric_score
from facellm.eval.builtin import build_builtin
from facellm.eval.evaluate import RunConfig, evaluate
from facellm.eval.facexbench import FaceXBenchWarning, load_facexbench, mc_prompt
from facellm.eval.grounding import ground
from facellm.eval.items import Benchmark, BenchmarkError, EvalItem
from facellm.eval.metrics import fairness, macro_f1
from facellm.eval.responders import EndpointResponder, LocalResponder, MajorityBaseline, RandomBaseline
from facellm.eval.runner import ResponseCache, run_responder
from facellm.eval.tools_agent import ToolsOnlyAgent
from facellm.toolcall import render_tool_call, render_tool_response
from facellm.tools.analyze import DEFAULT_STEPS, analyze
from facellm.tools.photos import photo
from facellm.tools.registry import ImageStore, result_json, run_tool

from openai_loopback import serve, tools_policy

FIXTURE = Path(__file__).parent / "fixtures" / "facexbench"
MANIFEST = Path(__file__).parent / "fixtures" / "facexbench_images.json"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fxb(tmp_path_factory) -> Path:
    """The FaceXBench-format fixture with its images made from the bundled photos."""
    root = tmp_path_factory.mktemp("fxb") / "bench"
    shutil.copytree(FIXTURE, root)
    for rel, spec in json.loads(MANIFEST.read_text()).items():
        if rel.startswith("_"):
            continue
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if "blank" in spec:
            Image.new("RGB", tuple(spec["blank"])).save(dst)
            continue
        img = Image.open(photo(spec["photo"]))
        (ImageOps.mirror(img) if spec.get("mirror") else img).save(dst)
    return root


@pytest.fixture(scope="module")
def analyses() -> dict:
    return {n: analyze(photo(n), steps=DEFAULT_STEPS) for n in ("astronaut", "grace_hopper", "group")}


def _record(name, fa, split, rid, style, question, answer, labels, agent_tool=None) -> Record:
    p = photo(name)
    if agent_tool:
        res = run_tool(agent_tool, {"image": "image_1"}, ImageStore({"image_1": str(p)}, analyses={"image_1": fa}))
        conv = [turn("human", f"<image>\n{question}"), turn("gpt", render_tool_call(agent_tool, {"image": "image_1"})),
                turn("tool", render_tool_response(result_json(res))), turn("gpt", answer)]
    else:
        conv = [turn("human", f"<image>\n{question}"), turn("gpt", answer)]
    return Record(id=rid, image=ImageRef(path=str(p), sha256=file_sha256(p)), faces=compact(fa),
                  labels=labels + model_labels(fa), conversations=conv, style="agent" if agent_tool else style,
                  category="counting" if agent_tool else "expression", tools=[agent_tool] if agent_tool else [],
                  generator="template-v1", split=split, source="offline", group=name)


@pytest.fixture(scope="module")
def records(analyses) -> list[Record]:
    a, g, h = analyses["astronaut"], analyses["group"], analyses["grace_hopper"]
    return [
        _record("astronaut", a, "test", "a1", "faceinstruct", "Is the person smiling?",
                "Yes, the woman is smiling broadly.",
                [human("num_faces", 1), human("smile", True, 1), human("apparent_gender", "woman", 1),
                 human("apparent_age_range", [30.0, 50.0], 1), human("eyeglasses", False, 1)]),
        _record("astronaut", a, "test", "a2", "agent", "How many faces are in this picture?",
                "There is one face in this image.", [human("num_faces", 1)], agent_tool="detect"),
        _record("group", g, "test", "g1", "facecaption", "Describe the photo.",
                "Six people sit around a table; several are smiling.",
                [human("num_faces", 6), human("apparent_gender", "woman", 1), human("apparent_gender", "man", 3),
                 human("smile", True, 3), human("apparent_age_range", [18.0, 30.0], 3)]),
        _record("grace_hopper", h, "train", "h1", "faceinstruct", "Is she wearing glasses?",
                "Yes, she wears glasses.", [human("eyeglasses", True, 1)]),
    ]


# ------------------------------------------------------------------ answer parsing


@pytest.mark.parametrize("text,expected", [
    ("(B)", "B"), ("B.", "B"), ("Answer: b", "B"), ("the answer is B", "B"), ("**C**", "C"),
    ('{"answer": "D"}', "D"), ("The person looks 40-49 years old.", "C"), ("b", "B"), ("Option B", "B"),
    ("Let me think. A is wrong, B might fit.\nAnswer: C", "C"), ("answer: (d)", "D"), ("B) 30-39", "B"),
    ("The answer is a woman", None), ("I think (A) or (B)", None), ("", None), ("no idea", None),
    ("<think>maybe A</think> Final answer: D", "D"), ("A, B, C, D.", None), ("A or B", None), ("(C).", "C"),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, ["20-29", "30-39", "40-49", "50-59"]) == expected


def test_extract_attribute_and_age_error():
    assert extract_attribute("She appears to be a woman.", "gender") == "woman"
    assert extract_attribute("Not a man; a female.", "gender") == "woman"
    assert extract_attribute('{"answer": "male"}', "gender") == "man"
    assert extract_attribute("The face looks happy and relaxed.", "expression") == "happy"
    assert extract_attribute("She is not happy, rather sad.", "expression") == "sad"
    assert extract_attribute("About 34 years old.", "age") == 34.0
    assert extract_attribute("30-39", "age") == 34.5
    assert extract_attribute("middle-aged", "age_group") == "middle-aged"
    assert extract_attribute("around 72", "age_group") == "senior"
    assert extract_attribute("I cannot tell.", "gender") is None
    assert age_error(40, [30, 50]) == 0 and age_error(25, [30, 50]) == 5 and age_error(33, 30) == 3


def test_rubric_score():
    s = rubric_score("Yes, she is smiling happily.", "Yes, the woman is smiling.", ["smile|smiling", "woman|she"])
    assert s.correct and s.score == 1.0 and s.method == "rubric"
    wrong = rubric_score("He looks sad and is smiling.", "She looks happy, smiling.", ["smile|smiling"])
    assert wrong.score == 0.5  # the contradicted expression halves the keyword score
    assert not rubric_score("", "x", ["x"]).correct


def _judge_policy(body):
    """A deterministic judge model: the rubric's word-overlap score, out of 10, as JSON."""
    prompt = body["messages"][0]["content"]
    cand = prompt.split("Candidate answer:")[1].split("\n")[0]
    ref = prompt.split("Reference answer:")[1].split("\n")[0]
    return {"content": json.dumps({"score": round(10 * rubric_score(cand, ref, []).score), "reason": "overlap"})}


def test_judge_through_endpoint_with_rubric_fallback():
    with serve(_judge_policy, model="judge-1") as url:
        j = Judge(url)
        s = j.score("Is she smiling?", "yes she is smiling", "yes she is smiling", [])
        assert s.method == "judge:judge-1" and s.correct and s.score == 1.0
    with serve(lambda body: {"content": "no opinion"}) as url:
        s = Judge(url).score("q", "the woman is smiling", "a smiling woman", ["smiling"])
        assert s.method == "rubric" and "unreadable" in s.detail and s.correct
    with serve(_judge_policy) as url:
        j = Judge(url, max_retries=0)
    s = j.score("q", "smiling", "smiling", ["smiling"])  # the server is gone: the rubric scores it
    assert s.method == "rubric" and "judge failed" in s.detail and s.correct


def test_judge_verdicts_are_cached(records, tmp_path):
    bench = build_builtin(records)
    bench = Benchmark(name="open", items=[it for it in bench.items if it.kind == "open"])
    with serve(_judge_policy, model="judge-1") as url:
        judge = Judge(url)
        res = evaluate(bench, [ToolsOnlyAgent()], tmp_path, judge=judge, config=RunConfig(progress=False))
        asked = len(serve.last_requests)
        assert asked == len(bench.items)
        evaluate(bench, [ToolsOnlyAgent()], tmp_path, judge=judge, config=RunConfig(progress=False))
        assert len(serve.last_requests) == asked
    assert res["summary_data"]["tools-only"]["zero_shot"]["open"]["scored_by"] == ["judge:judge-1"]


def test_grounding_counts_contradictions_not_silence():
    labels = [human("num_faces", 1), human("smile", True, 1)]
    assert ground("There is one face and the person is smiling.", labels).contradicted == []
    g = ground("There are three faces. The person is not smiling. She wears glasses.", labels)
    assert len(g.contradicted) == 2 and g.unsupported >= 1  # glasses: not measured, so not held against it


# ------------------------------------------------------------------ FaceXBench loader


def test_facexbench_loader_on_fixture(fxb):
    b = load_facexbench(fxb)
    assert len(b.items) == 9
    cats = {it.category for it in b.items}
    assert cats == {"face_analysis", "bias_fairness", "face_localization", "face_recognition", "tools_use"}
    by_id = {it.id: it for it in b.items}
    tr = by_id["tools_retrieval/1"]
    assert tr.num_images_label == "zero" and tr.meta["text_only"] and "api_1" in tr.context
    assert by_id["fixture_multiple_mcq/1"].num_images_label == "multiple"
    assert by_id["fixture_gender_single_mcq/1"].groups == {"gender": "woman"}
    assert all(Path(p).is_file() for it in b.items for p in it.images)
    zs, ic, cot = (mc_prompt(tr, s) for s in ("zero_shot", "in_context", "cot"))
    assert tr.context in zs and tr.prepend_text not in zs and tr.prepend_text in ic
    assert "(B) api_1-find_faces, api_3-classify_expression" in zs and "Answer: X" in cot
    assert load_facexbench(fxb / "tools_retrieval.json").items[0].id == "tools_retrieval/1"


def test_facexbench_loader_errors(tmp_path, fxb):
    with pytest.raises(BenchmarkError, match="no benchmark"):
        load_facexbench(tmp_path / "nope")
    with pytest.raises(BenchmarkError, match="no cached copy"):
        load_facexbench("someone/not-a-cached-dataset")
    bad = json.loads((FIXTURE / "fixture_single_mcq.json").read_text())
    bad["questions"]["1"]["correct_answer_option"] = "E"  # an unreadable item is left out, not the benchmark
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.warns(FaceXBenchWarning, match="not one of ABCD"):
        b = load_facexbench(tmp_path / "bad.json", check_images=False)
    assert b.counts["malformed"] == 1 and "fixture_single_mcq/1" not in {it.id for it in b.items}
    bad["questions"]["1"]["correct_answer_option"] = "A"  # now 'answer' (Happy) is not option A (Sad)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.warns(FaceXBenchWarning, match="scored by the key"):
        b = load_facexbench(tmp_path / "bad.json", check_images=False)
    assert b.items[0].answer_letter == "A" and b.counts["key_answer_mismatch"] == 1
    shutil.copy(FIXTURE / "fixture_single_mcq.json", tmp_path / "fixture_single_mcq.json")
    (tmp_path / "bad.json").unlink()
    with pytest.raises(BenchmarkError, match="missing"):  # none of its images is there: the wrong folder
        load_facexbench(tmp_path)


PUBLISHED = Path(__file__).parent / "fixtures" / "facexbench_published"


@pytest.fixture(scope="module")
def fxb_published(tmp_path_factory) -> Path:
    """The published-layout fixture (benchmark/ folder, quirks) with its images made from the bundled photos."""
    root = tmp_path_factory.mktemp("fxbp") / "facexbench"
    shutil.copytree(PUBLISHED, root)
    images = root / "benchmark" / "images"
    for rel, name in {"quirks_single_mcq/question_1.png": "grace_hopper",
                      "quirks_single_mcq/question_2.png": "astronaut",
                      "quirks_single_mcq/question_3.png": "astronaut"}.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo(name)).save(images / rel)
    (images / "tools_retrieval").mkdir(parents=True)
    for k in (1, 2):  # the published tool-retrieval questions point at a black placeholder image
        Image.new("RGB", (32, 32)).save(images / "tools_retrieval" / f"question_{k}.png")
    return root


def test_facexbench_published_quirks_load_and_score(fxb_published, tmp_path, capsys):
    """A key/answer disagreement is scored by the key (warned once per item, counted in the report); numeric
    options, a lower-case key, extra keys and an item without options do not stop the benchmark."""
    with pytest.warns(FaceXBenchWarning) as caught:
        b = load_facexbench(fxb_published)
    mismatch = [w for w in caught if "scored by the key" in str(w.message)]
    assert len(mismatch) == 2  # quirks 2 and tools_retrieval 2, once each
    assert b.counts == {"items": 5, "key_answer_mismatch": 2, "malformed": 1, "race_not_asked": 1}
    assert not any("race" in it.question.lower() for it in b.items)  # FaceLLM estimates no race: never asked
    assert any("race" in n for n in b.notes)
    by_id = {it.id: it for it in b.items}
    assert by_id["quirks_single_mcq/2"].correct_option == "1" and by_id["quirks_single_mcq/1"].options[0] == "3"
    assert by_id["quirks_single_mcq/3"].answer_letter == "A" and "key_answer_mismatch" not in by_id[
        "quirks_single_mcq/3"].meta
    assert by_id["tools_retrieval/2"].answer_letter == "A" and by_id["tools_retrieval/2"].meta["text_only"]

    from facellm.eval.cli import main

    out = tmp_path / "published"
    with serve(tools_policy(), model="served") as url:
        rc = main(["eval", "--benchmark", str(fxb_published), "--endpoint", url, "--baselines", "tools",
                   "--out", str(out), "-q"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["benchmark_counts"]["key_answer_mismatch"] == 2
    assert any("scored by the key" in n for n in data["notes"])
    tools_rows = {r["item"]: r for r in data["items"] if r["model"] == "tools-only"}
    assert len(tools_rows) == 5
    # the tools count one face on Grace Hopper's photo: option B, the key
    assert tools_rows["quirks_single_mcq/1"]["correct"] is True
    # scored by the key (A), whatever the 'answer' text says
    assert tools_rows["tools_retrieval/2"]["reference"] == "A"
    speed = data["summary"]["tools-only"]["zero_shot"]["speed"]
    assert speed["new_items"] == 5 and speed["items_per_s"] > 0


# ------------------------------------------------------------------ built-in benchmark


def test_builtin_from_records(records):
    b = build_builtin(records)
    ids = {it.id for it in b.items}
    assert not any("h1" in i for i in ids) and "rec/a1" in ids and "rec/a2" in ids  # only the test split
    kinds = {it.kind for it in b.items}
    assert kinds == {"mc", "attribute", "open", "tool"}
    tool = next(it for it in b.items if it.kind == "tool")
    assert tool.expected_tools == ["detect"] and tool.analysis is not None
    age = next(it for it in b.items if it.attribute == "age" and it.images[0].endswith("astronaut.png"))
    assert age.reference == [30.0, 50.0] and age.groups == {"gender": "woman", "age_group": "middle-aged"}
    count_group = next(it for it in b.items if it.id.endswith("/count") and "t1" in it.images[0])
    assert count_group.correct_option == "6"
    man = next(it for it in b.items if it.id.endswith("f3/gender"))
    assert man.reference == "man" and "face 3" in man.question
    # the group photo's face 3 was annotated 18-30 and a man: its own groups, not the image's
    assert man.groups == {"gender": "man", "age_group": "young adult"}
    # a test group that also appears in training is refused
    leak = records[0].model_copy(update={"id": "leak", "split": "train"})
    with pytest.raises(BenchmarkError, match="held-out"):
        build_builtin([*records, leak])
    with pytest.raises(BenchmarkError, match="no held-out"):
        build_builtin([records[-1]])


# ------------------------------------------------------------------ runs, cache, report


def test_endpoint_run_baselines_resume_and_report(fxb, records, tmp_path):
    bench = Benchmark(name="mixed", items=load_facexbench(fxb).items + build_builtin(records).items)
    out = tmp_path / "report"
    with serve(tools_policy(), model="tools-served") as url:
        model = EndpointResponder(url)
        no_image = EndpointResponder(url, with_images=False)
        responders = [RandomBaseline(), MajorityBaseline(bench.items), ToolsOnlyAgent(), model, no_image]
        res = evaluate(bench, responders, out, config=RunConfig(concurrency=4, progress=False),
                       main_model=model.name)
        n_requests = len(serve.last_requests)
        assert n_requests >= len(bench.items) * 2  # every item asked, tool items twice (call, then answer)
        # the served tools agent called the tool through the tool loop and answered from its result
        tool_req = [r for r in serve.last_requests if r.get("tools")]
        assert any(m["role"] == "tool" for r in tool_req for m in r["messages"])
        # images travel as data URIs; the no-image baseline sends none
        assert any("data:image/" in json.dumps(r["messages"]) for r in serve.last_requests)
        # a second run is answered from the cache: no new requests
        res2 = evaluate(bench, responders, out, config=RunConfig(concurrency=4, progress=False), main_model=model.name)
        assert len(serve.last_requests) == n_requests
    summary = res["summary_data"]
    full = summary["tools-served"]["zero_shot"]
    assert full["n"] == len(bench.items) and full["errors"] == 0
    assert full["mc"]["per_category"]["face_localization"]["accuracy"] == 1.0  # counting by detector: 6 and 1
    assert set(full["mc"]["per_num_images"]) == {"zero", "single", "multiple"}
    assert full["tools"]["right_tool"] == 1.0 and full["tools"]["valid_args"] == 1.0
    assert full["attributes"]["age"]["mae"] is not None and "gender" in full["attributes"]
    assert summary["tools-served (no image)"]["zero_shot"]["mc"]["per_category"]["face_localization"][
        "accuracy"] < 1.0
    assert "gender" in full["fairness"] and full["fairness"]["gender"]["groups"]
    # the endpoint model is the same agent as the in-process tools-only baseline: same MC answers
    assert summary["tools-only"]["zero_shot"]["mc_accuracy"] == full["mc_accuracy"]
    data = json.loads((out / "results.json").read_text())
    assert len(data["items"]) == 5 * len(bench.items)
    assert all(r["cached"] for r in json.loads(Path(res2["results"]).read_text())["items"])
    md = (out / "summary.md").read_text()
    assert "| tools-served |" in md and "| random |" in md and "largest accuracy gap" in md
    for p in data["plots"]:
        with Image.open(out / p) as im:
            assert im.size[0] > 400
    assert any("confusion" in p for p in data["plots"]) and any("fairness" in p for p in data["plots"])


def test_failed_requests_are_retried_on_resume(fxb, tmp_path):
    items = load_facexbench(fxb).items[:3]
    state = {"fail": True}

    def flaky(body):
        if state["fail"]:
            raise RuntimeError("overloaded")
        return {"content": "Answer: A"}

    cache = ResponseCache(tmp_path / "c.sqlite")
    with serve(flaky) as url:
        r = EndpointResponder(url, timeout=10)
        r.client = r.client.with_options(max_retries=0)
        first = run_responder(r, items, cache=cache, progress=False)
        assert all(t["error"] for t in first) and len(cache) == 0
        state["fail"] = False
        second = run_responder(r, items, cache=cache, progress=False)
        assert not any(t["error"] for t in second) and len(cache) == 3
    cache.close()


def test_local_tiny_model(tmp_path, records):
    from tiny_facellm import tiny_model

    model = tiny_model(tmp_path)
    items = [it for it in build_builtin(records).items if it.kind in ("mc", "tool")][:2]
    items += [next(it for it in build_builtin(records).items if it.kind == "tool")]
    local = LocalResponder(model, name="tiny", max_new_tokens=8)
    out = run_responder(local, items, progress=False, concurrency=2)
    assert len(out) == 3 and not any(t["error"] for t in out)
    assert all(t["turns"] and isinstance(t["turns"][0]["content"], str) for t in out)
    blind = run_responder(LocalResponder(model, name="tiny", with_images=False, max_new_tokens=8), items[:1],
                          progress=False)
    assert blind[0]["model"] == "tiny (no image)" and not blind[0]["error"]


def test_metrics_macro_f1_and_fairness_gap():
    assert macro_f1([("a", "a"), ("b", "a"), ("b", "b")]) == pytest.approx((2 / 3 + 2 / 3) / 2, abs=1e-4)
    rows = [{"kind": "mc", "correct": c, "groups": {"gender": g}, "grounding": None}
            for g, c in [("woman", True), ("woman", True), ("man", True), ("man", False)]]
    f = fairness(rows)["gender"]
    assert f["groups"]["woman"]["accuracy"] == 1.0 and f["groups"]["man"]["accuracy"] == 0.5
    assert f["gaps"]["accuracy"] == {"gap": 0.5, "highest": "woman", "lowest": "man"}


def test_item_validation():
    with pytest.raises(ValueError, match="correct option"):
        EvalItem(id="x", kind="mc", question="q", options=["a", "b"], answer_letter="C")
    with pytest.raises(ValueError, match="duplicate"):
        it = EvalItem(id="x", kind="open", question="q")
        Benchmark(name="b", items=[it, it])


def test_limit_samples_sorted_and_periodic_categories_fairly_and_keeps_every_category():
    # sorted like UTKFace (by age): the first 4 would all be children
    ages = [EvalItem(id=f"a{i}", kind="open", question="age?", category="age", reference=i) for i in range(1, 81)]
    # round-robin over 7 classes like the FER2013 part: every 17th or 18th item would hit 2 classes only
    expr = [EvalItem(id=f"e{i}", kind="open", question="expression?", category="expression", reference=i % 7)
            for i in range(350)]
    gender = [EvalItem(id=f"g{i}", kind="open", question="gender?", category="gender") for i in range(3)]
    bench = Benchmark(name="b", items=ages + expr + gender)
    small = bench.limit(20)
    picked_ages = [it.reference for it in small.items if it.category == "age"]
    assert len(picked_ages) == 20 and min(picked_ages) < 20 and max(picked_ages) > 60
    assert picked_ages == sorted(picked_ages)  # benchmark order kept
    assert len({it.reference for it in small.items if it.category == "expression"}) >= 6
    assert [it.id for it in small.items if it.category == "gender"] == ["g0", "g1", "g2"]
    assert [it.id for it in bench.limit(20).items] == [it.id for it in small.items]  # the same sample every run
    assert bench.limit(None).items == bench.items


# ------------------------------------------------------------------ CLI


def test_cli_endpoint_on_fixture(fxb, tmp_path, capsys):
    from facellm.eval.cli import main

    out = tmp_path / "cli"
    with serve(tools_policy(), model="tools-served") as url:
        rc = main(["eval", "--benchmark", str(fxb), "--endpoint", url, "--baselines", "random,majority",
                   "--settings", "zero_shot,cot", "--limit", "1", "--out", str(out), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "[cot]" in printed and "| tools-served |" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["settings"] == ["zero_shot", "cot"] and {r["model"] for r in data["items"]} == {
        "random", "majority", "tools-served"}
    assert main(["eval", "--benchmark", str(fxb), "--out", str(out)]) == 1  # no model chosen
    assert "choose the model" in capsys.readouterr().err
    assert main(["eval", "--benchmark", str(tmp_path / "missing"), "--local", "--out", str(out)]) == 1
    with pytest.raises(SystemExit):
        main(["eval", "--benchmark", str(fxb), "--local", "--baselines", "oracle", "--out", str(out)])


def test_interrupted_run_resumes_where_it_stopped(fxb, tmp_path):
    items = load_facexbench(fxb).items
    cache = ResponseCache(tmp_path / "c.sqlite")
    with serve(lambda body: {"content": "(A)"}) as url:
        r = EndpointResponder(url)
        run_responder(r, items[:4], cache=cache, progress=False)  # a run stopped after 4 items
        assert len(serve.last_requests) == 4
        out = run_responder(r, items, cache=cache, progress=False)
        assert len(serve.last_requests) == len(items)  # only the rest were asked
        assert [t["item"] for t in out] == [it.id for it in items]
        assert sum(t["cached"] for t in out) == 4
        # another setting or another model is a different cache entry
        run_responder(r, items[:1], "cot", cache=cache, progress=False)
        assert len(serve.last_requests) == len(items) + 1
    cache.close()


def test_cli_local_model_on_builtin_records(records, tmp_path, capsys):
    """`facellm eval --benchmark builtin --data DIR --local --model DIR`: records written as data_gen does."""
    from tiny_facellm import tiny_model

    from facellm.eval.cli import main

    data = tmp_path / "data"
    (data / "shards").mkdir(parents=True)
    (data / "shards" / "part-00000.jsonl").write_text("".join(r.model_dump_json(by_alias=True) + "\n"
                                                              for r in records))
    model_dir = tiny_model(tmp_path).save_pretrained(tmp_path / "tiny-model")
    other_dir = tiny_model(tmp_path, seed=1).save_pretrained(tmp_path / "other-init")
    out = tmp_path / "out"
    rc = main(["eval", "--benchmark", "builtin", "--data", str(data), "--local", "--model", str(model_dir),
               "--compare", str(other_dir), "--baselines", "tools,no_image", "--limit", "1", "--max-tokens", "4",
               "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    data_out = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in data_out["items"]} == {"tools-only", "tiny-model", "tiny-model (no image)",
                                                       "other-init"}
    assert {r["kind"] for r in data_out["items"]} == {"mc", "attribute", "open", "tool"}
    # NAME=DIR names a compared model; the answers come from the cache (its identity is the folder, not the name)
    rc = main(["eval", "--benchmark", "builtin", "--data", str(data), "--local", "--model", str(model_dir),
               "--compare", f"second-seed={other_dir}", "--baselines", "none", "--limit", "1", "--max-tokens", "4",
               "--out", str(out), "-q"])
    assert rc == 0
    again = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in again["items"]} == {"tiny-model", "second-seed"}
    assert [r["answer"] for r in again["items"] if r["model"] == "second-seed"] == \
        [r["answer"] for r in data_out["items"] if r["model"] == "other-init"]
    assert main(["eval", "--benchmark", "builtin", "--data", str(tmp_path / "empty"), "--local", "--out",
                 str(out)]) == 1
    assert "no data_gen records" in capsys.readouterr().err


def test_prefix_reuse_keeps_greedy_answers_and_skips_the_shared_context(tmp_path, fxb_published):
    """Text-only items behind one long shared context: the second item reuses the context's KV cache, and the
    answers are the ones generated without the cache."""
    from tiny_facellm import tiny_model

    model = tiny_model(tmp_path)
    with pytest.warns(FaceXBenchWarning):
        items = [it for it in load_facexbench(fxb_published).items if it.meta["text_only"]]
    assert len(items) == 2 and len(items[0].context) > 500
    cached = LocalResponder(model, name="tiny", max_new_tokens=6)
    plain = LocalResponder(model, name="tiny", max_new_tokens=6, prefix_cache=False)
    a = run_responder(cached, items, progress=False, concurrency=1)
    b = run_responder(plain, items, progress=False, concurrency=1)
    assert [t["final"] for t in a] == [t["final"] for t in b] and not any(t["error"] for t in a)
    stats = cached.prefix.stats.to_dict()
    assert stats["hits"] == 1 and stats["reused_tokens"] > 200  # the API catalogue, prefilled once
