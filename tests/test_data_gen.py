"""data_gen end to end on the offline source: record schema, provenance, fact check, the four generators (agent
traces with real tool outputs in the one tool-call format), photo-disjoint splits, dedup, the loader into the
processor's format, HF export, stats, the CLI, the teacher over loopback HTTP, and kill-and-resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from facellm.data_gen.agent_traces import SCENARIOS, Trace
from facellm.data_gen.cli import main as data_main
from facellm.data_gen.factcheck import check, extract_claims
from facellm.data_gen.facts import Facts
from facellm.data_gen.generators import STYLE_CATEGORIES
from facellm.data_gen.loader import hf_json_files, load_records, training_examples, training_messages
from facellm.data_gen.pipeline import Dedup, GenerateConfig, Generator, finalize_splits, question_key
from facellm.data_gen.schema import Label, Record, estimate, from_openai, human, transform_label, turn
from facellm.data_gen.sources import SourceItem
from facellm.data_gen.stats import compute_stats
from facellm.data_gen.templates import TemplateTeacher, distinct_n
from facellm.toolcall import CHAT_TEMPLATE, parse_tool_calls, parse_tool_responses
from facellm.tools.photos import photo
from facellm.tools.registry import ImageStore, observation, run_tool

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SMALL = dict(variants=1, composites=2, per_image=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dg_cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache):
    """One offline run with every style: 9 photos x (original + 1 variant) + 2 composites per split."""
    out = tmp_path_factory.mktemp("dg_offline")
    gen = Generator(GenerateConfig(out=out, cache_dir=cache, progress=False, **SMALL))
    stats = gen.run()
    return out, stats, list(load_records(out))


# ------------------------------------------------------------------ schema and provenance


def test_label_provenance_is_enforced():
    assert human("smile", True).kind == "human"
    assert estimate("smile", True, "mesh cues", 0.9).kind == "model"
    assert transform_label("mirrored", True).kind == "transform"
    with pytest.raises(ValueError, match="means kind 'model'"):
        Label(name="age", value=30, source="age-model", kind="human")
    with pytest.raises(ValueError, match="means kind 'human'"):
        Label(name="age", value=30, source="human", kind="model")
    with pytest.raises(ValueError, match="no model probability"):
        Label(name="age", value=30, source="human", kind="human", probability=0.5)


def _record(**kw) -> Record:
    base = dict(id="x", image={"path": "a.jpg", "sha256": "0" * 64}, style="fairfacegpt", category="c",
                generator="t", split="train", source="s", group="g",
                conversations=[turn("human", "<image>\nQ?"), turn("gpt", "A.")])
    return Record(**{**base, **kw})


def test_record_validation():
    assert _record().answers() == ["A."] and _record().questions() == ["Q?"]
    with pytest.raises(ValueError, match="start with '<image>'"):
        _record(conversations=[turn("human", "Q?"), turn("gpt", "A.")])
    with pytest.raises(ValueError, match="at least one gpt turn"):
        _record(conversations=[turn("human", "<image>\nQ?")])
    with pytest.raises(ValueError, match="only agent traces"):
        _record(conversations=[turn("human", "<image>\nQ?"), turn("tool", "<tool_response>\n{}\n</tool_response>"),
                               turn("gpt", "A.")])
    with pytest.raises(ValueError, match="malformed tool call"):
        _record(style="agent", conversations=[turn("human", "<image>\nQ?"), turn("gpt", "<tool_call>\nnope\n</tool_call>")])
    with pytest.raises(ValueError, match="sha256"):
        _record(image={"path": "a.jpg", "sha256": "abc"})


# ------------------------------------------------------------------ fact check


@pytest.mark.parametrize("answer, ok", [
    ("The person is smiling.", True),
    ("The person is not smiling.", False),
    ("She wears glasses.", False),  # the record holds no glasses label: never invent one
    ("There are 2 faces.", False),
    ("There is one face.", True),
    ("The expression reads as happy.", True),
    ("The expression reads as sad.", False),
    ("Perceived age: 30-50 years.", True),
    ("He looks about 70 years old.", False),  # wrong gender word and an age far outside the labels
    ("I can't tell whether anyone is smiling.", True),  # hedged: no claim
    ("No, the person is not smiling: the smile cue scores 0.00.", False),
    ("glasses: no; hat: no", False),
])
def test_factcheck(answer, ok):
    labels = [human("num_faces", 1), human("smile", True, 1), human("apparent_gender", "woman", 1),
              human("apparent_age_range", [30.0, 50.0], 1), estimate("expression", "happy", "fer", 0.9, 1)]
    assert check(answer, labels).ok is ok, extract_claims(answer)


def test_factcheck_names_only_from_the_gallery():
    names = {"Dana Whitfield"}
    matched = [estimate("identity", "Dana Whitfield", "gallery", face_id=1)]
    assert check("This is Dana Whitfield.", matched, known_names=names).ok
    assert not check("This is Dana Whitfield.", [], known_names=names).ok
    q = "Is this Dana Whitfield?"
    assert check("I can't confirm that: the face does not match Dana Whitfield.", [], known_names=names, question=q).ok
    assert not check("Yes, this is Dana Whitfield.", [], known_names=names, question=q).ok


def test_generators_never_state_what_the_record_lacks():
    rng = random.Random(0)
    facts = Facts([human("num_faces", 1), estimate("num_faces", 1, "det"), estimate("smile", False, "cues", 0.1, 1)])
    for style, cats in STYLE_CATEGORIES.items():
        for name, fn in cats.items():
            for _ in range(5):
                qa = fn(TemplateTeacher(rng), facts, None if name in ("forensics", "counting", "caption") else 1)
                if qa is not None:
                    assert check(qa[1], facts.labels).ok, (name, qa)
    # categories whose facts are missing produce nothing rather than a guess
    t = TemplateTeacher(rng)
    assert STYLE_CATEGORIES["fairfacegpt"]["accessories"](t, facts, 1) is None
    assert STYLE_CATEGORIES["fairfacegpt"]["demographics"](t, facts, 1) is None
    assert STYLE_CATEGORIES["faceinstruct"]["age_estimation"](t, facts, 1) is None


# ------------------------------------------------------------------ the offline run


def test_offline_run_every_style_and_valid_records(run):
    out, stats, records = run
    assert stats.written == len(records) > 150
    assert set(stats.by_style) == {"fairfacegpt", "faceinstruct", "facecaption", "agent"}
    assert len({r.id for r in records}) == len(records)
    assert stats.rejected < 0.1 * stats.written  # the templates rarely trip the fact check
    for r in records:
        assert Path(out / r.image.path).is_file() and r.labels
        # every answer passes the fact check against the record's own labels
        names = {"Dana Whitfield", "Margaret Ellison"}
        for a in r.answers():
            assert check(a, r.labels, known_names=names, question=r.questions()[0]).ok, (r.id, a)


def test_splits_are_photo_disjoint_and_cover_test(run):
    _, _, records = run
    photo_split: dict[str, set[str]] = {}
    for r in records:
        photos = r.meta["photo"] if isinstance(r.meta["photo"], list) else [r.meta["photo"]]
        for p in photos:
            photo_split.setdefault(p, set()).add(r.split)
    assert all(len(s) == 1 for s in photo_split.values()), photo_split  # no photo straddles splits
    assert {r.split for r in records} == {"train", "test"}
    assert any(r.split == "test" and r.style == "agent" for r in records)


def test_dedup_per_image_style_question(run):
    _, _, records = run
    keys = [(r.image.sha256, r.style, question_key(r.questions()[0])) for r in records]
    assert len(keys) == len(set(keys))
    d = Dedup()
    d.add("s", "fairfacegpt", "How many faces are in this image?")
    assert d.is_dup("s", "fairfacegpt", "How many faces are in the image?")  # near duplicate
    assert not d.is_dup("s", "agent", "How many faces are in this image?")  # another style may ask it
    assert not d.is_dup("t", "fairfacegpt", "How many faces are in this image?")


def test_evidence_keeps_human_and_model_labels_apart(run):
    _, _, records = run
    astro = next(r for r in records if r.meta.get("photo") == "astronaut" and r.meta["augmentation"] == [])
    kinds = {(lb.name, lb.kind) for lb in astro.labels}
    assert ("smile", "human") in kinds and ("smile", "model") in kinds  # both kept, side by side
    assert ("apparent_gender", "human") in kinds and ("perceived_gender", "model") in kinds
    for lb in astro.labels:
        if lb.kind == "model":
            assert lb.source not in ("human", "transform") and len(lb.source) > 3
    flipped = [r for r in records if r.meta.get("photo") != "group" and "horizontal flip" in r.meta["augmentation"]]
    for r in flipped:
        assert any(lb.name == "mirrored" and lb.kind == "transform" for lb in r.labels)


def test_agent_traces_hold_real_tool_outputs(run):
    out, _, records = run
    agent = [r for r in records if r.style == "agent"]
    assert len(agent) > 30 and all(r.tools for r in agent)
    checked = 0
    for r in agent[:25]:
        store = ImageStore({"image_1": out / r.image.path})  # a fresh store: the tools run again here
        turns = r.conversations
        for k, t in enumerate(turns):
            if t.from_ != "gpt":
                continue
            calls = parse_tool_calls(t.value).tool_calls
            if not calls:
                continue
            assert turns[k + 1].from_ == "tool"
            (result,) = parse_tool_responses(turns[k + 1].value)
            if calls[0].name in ("identify",) or "image_2" in calls[0].arguments.values():
                continue  # needs the run's gallery / the second image; checked below
            try:
                fresh = run_tool(calls[0].name, calls[0].arguments, store)
            except ValueError as e:
                fresh = {"error": str(e)}
            assert observation(fresh) == result, (r.id, calls[0].name)  # the compact view the model reads
            checked += 1
        assert turns[-1].from_ == "gpt" and not parse_tool_calls(turns[-1].value).tool_calls
    assert checked >= 15
    # the stored text is the one format: render it and parse the calls back
    text = agent[0].training_text()
    assert "# Tools" in text and "<tool_call>\n{\"name\": " in text and "<|im_start|>tool\n<tool_response>" in text


def test_agent_scenarios_multi_face_gallery_and_refusal(run, cache):
    out, _, _ = run
    from facellm.data_gen.agent_traces import gallery_for, OFFLINE_GALLERY
    from facellm.data_gen.evidence import AnalysisCache

    gallery = gallery_for(out, OFFLINE_GALLERY)  # already built by the run: reopened
    analyses = AnalysisCache(cache)

    def trace(name: str, photo_name: str, seed: int = 0):
        fa = analyses.get(photo(photo_name))
        store = ImageStore({"image_1": photo(photo_name)}, gallery=gallery, analyses={"image_1": fa})
        ctx = {"n": fa.num_faces, "fa": fa, "gallery_names": {p.name for p in gallery.list()}}
        fn, _ = SCENARIOS[name]
        tr = Trace(store, "", random.Random(seed))
        return fn(tr, ctx)

    count = trace("count", "group")
    assert "6 faces" in count[-1].value
    smiling = trace("which_smiling", "group")[-1].value
    assert "of the 6 faces" in smiling and "face 3" in smiling  # by eye: the seated man in the middle smiles
    left = trace("who_left", "group")[-1].value
    assert "does not match anyone enrolled" in left
    who = trace("identify_refusal", "camera")[-1].value  # nobody enrolled: refuse to name
    assert "gallery" in who and "Dana" not in who and "Margaret" not in who
    assert trace("identify_refusal", "astronaut")[-1].value.startswith("The gallery matches this face to Dana Whitfield")
    is_it = trace("verify_gallery", "grace_hopper", seed=3)
    asked = "Dana Whitfield" if "Dana Whitfield" in is_it[0].value else "Margaret Ellison"
    assert asked in is_it[0].value and "Margaret Ellison" in is_it[-1].value  # the gallery's match, not the guess
    assert is_it[-1].value.startswith("Yes") == (asked == "Margaret Ellison")
    err = trace("tool_error", "astronaut")
    assert '"error":"there is no face' in err[2].value and "There is no face" in err[-1].value


def test_variety_distinct_n(run):
    _, _, records = run
    for style in ("fairfacegpt", "faceinstruct", "facecaption", "agent"):
        answers = [a for r in records if r.style == style for a in r.answers()]
        assert distinct_n(answers, 2) > 0.15, style
    qs = [r.questions()[0] for r in records if r.style == "fairfacegpt"]
    assert len(set(qs)) > 0.5 * len(qs)


# ------------------------------------------------------------------ output formats


def test_loader_gives_processor_messages(run):
    out, _, records = run
    agent = next(r for r in records if r.style == "agent" and len(r.conversations) > 3)
    msgs = training_messages(agent, out, tool_format="text")
    assert msgs[0]["role"] == "system" and "# Tools" in msgs[0]["content"]
    img, text = msgs[1]["content"]
    assert img["type"] == "image" and Path(img["image"]).is_file() and "<image>" not in text["text"]
    # text form: a plain ChatML template (no tool support at all) renders exactly the training text
    from tiny_facellm import tiny_tokenizer

    plain = [{**m, "content": m["content"] if isinstance(m["content"], str) else "<image>\n" + m["content"][1]["text"]}
             for m in msgs]
    assert tiny_tokenizer().apply_chat_template(plain, tokenize=False) == agent.training_text()
    # openai form through the shared Jinja template renders the same

    oa = training_messages(agent, out)  # the default: OpenAI tool_calls, for the processor's CHAT_TEMPLATE
    assert any(m.get("tool_calls") for m in oa) and any(m["role"] == "tool" for m in oa)
    oa_plain = [{**m, "content": [{"type": "image"}, m["content"][1]]} if isinstance(m["content"], list) else m
                for m in oa]
    assert tiny_tokenizer().apply_chat_template(oa_plain, chat_template=CHAT_TEMPLATE, tokenize=False) == \
        agent.training_text()
    # round trip OpenAI -> LLaVA turns
    assert [t.value for t in from_openai(agent.to_openai())] == [t.value for t in agent.conversations]
    ex = list(training_examples(out, split="test"))
    assert ex and all(e.split == "test" for e in ex) and ex[0].analysis is not None


def test_processor_takes_loaded_examples(run, tmp_path):
    from tiny_facellm import tiny_model

    from facellm.processor import IGNORE_INDEX

    out, _, records = run
    model = tiny_model(tmp_path)  # its processor renders with facellm.toolcall.CHAT_TEMPLATE
    tok = model.processor.tokenizer
    rec = next(r for r in records if r.style == "faceinstruct" and r.faces and r.faces.num_faces == 1)
    batch = model.processor(training_messages(rec, out))
    labels = batch["labels"][0]
    learned = tok.decode(batch["input_ids"][0][labels != IGNORE_INDEX])
    assert learned == rec.answers()[0] + "<|im_end|>" and batch["pixel_values"].shape[0] == 1
    # an agent trace: the calls and the final answer are learned, the tool results are not
    agent = next(r for r in records if r.style == "agent" and r.faces and r.faces.num_faces == 1
                 and len(r.conversations) == 4)
    batch = model.processor(training_messages(agent, out))
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    learned = tok.decode(ids[labels != IGNORE_INDEX])
    call = agent.conversations[1].value
    assert learned == call + "<|im_end|>" + agent.conversations[3].value + "<|im_end|>"
    text = tok.decode(ids)
    assert agent.conversations[2].value in text and "<tool_response>\n<tool_response>" not in text


def test_hf_export_and_json_loading(run):
    out, _, records = run
    import datasets

    dd = datasets.load_from_disk(str(out / "hf"))
    assert sum(len(v) for v in dd.values()) == len(records) and set(dd) == {"train", "test"}
    row = dd["test"][0]
    assert row["image_sha256"] and json.loads(row["labels"])[0]["kind"] in ("human", "transform", "model")
    assert (out / "parquet" / "train.parquet").is_file()
    js = datasets.load_dataset("json", data_files=hf_json_files(out), split="train",
                               cache_dir=str(out / "cache" / "hf_json"))
    assert len(js) == len(records) and js[0]["conversations"][0]["from"] == "human"


def test_stats(run):
    out, _, records = run
    st = compute_stats(out)
    assert st.records == len(records) and st.leaks == []
    assert st.label_kinds["human"] > 0 and st.label_kinds["model"] > st.label_kinds["human"]
    assert st.by_split["train"] + st.by_split["test"] == len(records)
    assert st.tool_calls["detect"] > 0 and "human: human" in st.label_sources


# ------------------------------------------------------------------ splits


def test_finalize_splits_identity_disjoint():
    items = [SourceItem(key=f"k{i}", image_path="x", source="s", group=g, split=sp)
             for i, (g, sp) in enumerate([("id:1", "train"), ("id:1", "test"), ("id:2", None), ("id:3", "validation")])]
    moved = finalize_splits(items, seed=0, held_out=0.5)
    assert items[0].split == items[1].split == "train" and moved == 1
    assert items[3].split == "validation"  # a test split exists, so validation stays validation


# ------------------------------------------------------------------ CLI, resume


def test_cli_generate_stats_and_errors(tmp_path, cache, capsys):
    out = tmp_path / "cli"
    args = ["generate", "--source", "offline", "--styles", "fairfacegpt,facecaption", "--out", str(out), "--limit",
            "5", "--variants", "1", "--composites", "1", "--cache", str(cache), "--quiet", "--no-export"]
    assert data_main(args) == 0
    first = capsys.readouterr().out
    assert "written:" in first and "records_per_s" in first
    assert data_main(args) == 0  # a rerun finds everything done
    assert "written: 0" in capsys.readouterr().out
    assert data_main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "per style" in text and "label provenance" in text and "human-annotated labels" in text
    assert (out / "answer_lengths.png").stat().st_size > 10_000
    # other settings into the same folder are refused, not mixed
    assert data_main(args[:-6] + ["--seed", "3", "--variants", "1", "--composites", "1", "--quiet"]) == 1
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_main(["generate", "--styles", "poems", "--out", str(tmp_path / "x")])
    assert data_main(["generate", "--source", "celeba", "--out", str(tmp_path / "y")]) == 1
    assert "needs --path" in capsys.readouterr().err
    assert data_main(["stats", str(tmp_path / "nothing")]) == 1


def test_partial_lines_from_a_kill_are_recovered(tmp_path, cache):
    out = tmp_path / "partial"
    cfg = dict(out=out, cache_dir=cache, styles=("fairfacegpt",), progress=False, export_hf=False, limit=4, **SMALL)
    Generator(GenerateConfig(**cfg)).run()
    ref = sorted((out / "shards" / "part-00000.jsonl").read_text().splitlines())
    # a kill mid-write: the last unit's progress entry is gone and its last record half written
    shard = out / "shards" / "part-00000.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    prog = out / "progress.log"
    units = prog.read_text().splitlines()
    prog.write_text("\n".join(units[:-1]) + "\n" + units[-1][:3])
    stats = Generator(GenerateConfig(**cfg)).run()
    assert stats.skipped_units == len(units) - 1 and stats.already_written >= 0
    assert sorted(shard.read_text().splitlines()) == ref


@pytest.mark.slow
def test_worker_processes_give_the_same_records(tmp_path, cache):
    """--workers 2: the tools run in spawned processes first; the records are the same as in-process."""
    kw = dict(styles=("fairfacegpt", "agent"), limit=10, progress=False, export_hf=False, **SMALL)
    Generator(GenerateConfig(out=tmp_path / "a", cache_dir=cache, **kw)).run()
    stats = Generator(GenerateConfig(out=tmp_path / "b", cache_dir=tmp_path / "cold", workers=2, **kw)).run()
    assert stats.analysed >= 8 and _lines(tmp_path / "a") == _lines(tmp_path / "b")


def _lines(out: Path) -> list[str]:
    return sorted(line for p in sorted((out / "shards").glob("*.jsonl")) for line in p.read_text().splitlines())


def _start_and_wait(cmd: list[str], progress: Path, units: int) -> subprocess.Popen:
    # a shell that starts the test run in the background makes SIGINT ignored, and children inherit that:
    # give the child the default disposition so that Ctrl-C (SIGINT) reaches it as it would from a terminal
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600  # a cold start (models, the offline originals) on a shared, loaded CPU is slow
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= units:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    return proc


def test_ctrl_c_then_sigkill_then_resume_loses_and_repeats_nothing(tmp_path, cache):
    args = ["--source", "offline", "--styles", "fairfacegpt,faceinstruct,facecaption,agent", "--limit", "16",
            "--variants", "1", "--composites", "1", "--quiet", "--no-export", "--shard-size", "7"]
    ref = tmp_path / "ref"
    assert data_main(["generate", "--out", str(ref), "--cache", str(cache), *args]) == 0
    want = _lines(ref)
    out = tmp_path / "killed"
    progress = out / "progress.log"
    cmd = [sys.executable, "-m", "facellm.data_gen.cli", "generate", "--out", str(out), "--cache",
           str(tmp_path / "cold_cache"), *args]  # a cold cache: slow enough to be stopped mid-run
    # Ctrl-C: a clean stop with a message and exit status 130
    proc = _start_and_wait(cmd, progress, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    after_int = len(progress.read_text().splitlines())
    # SIGKILL: no chance to clean up at all
    proc = _start_and_wait(cmd, progress, after_int + 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "DONE").exists()
    assert 0 < len(progress.read_text().splitlines()) < 16 + 2
    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    got = _lines(out)
    assert len(got) == len(set(got)) and got == want  # nothing lost, nothing twice, identical records
    assert len(list((out / "shards").glob("*.jsonl"))) > 1  # several shards


# ------------------------------------------------------------------ teacher over loopback HTTP


class _Teacher(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        _Teacher.calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Teacher.calls == 1:  # one transient failure: the client retries
            self.send_response(503)
            self.end_headers()
            return
        draft = body["messages"][1]["content"].split("Draft answer: ")[1].split("\nRewrite")[0]
        # the teacher "improves" half the answers by inventing glasses: those must be rejected
        text = ("In other words: " + draft) if _Teacher.calls % 2 else draft + " She also wears glasses."
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_teacher_rewrites_are_fact_checked(tmp_path, cache):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        gen = Generator(GenerateConfig(out=tmp_path / "t", cache_dir=cache, styles=("faceinstruct",), limit=3,
                                       progress=False, export_hf=False, teacher_url=url, teacher_model="tiny",
                                       teacher_concurrency=2, **SMALL))
        gen.teacher.backoff_s = 0.01
        stats = gen.run()
    finally:
        server.shutdown()
    records = list(load_records(tmp_path / "t"))
    answers = [a for r in records for a in r.answers()]
    assert records and all(r.generator == "teacher:tiny" for r in records)
    assert any(a.startswith("In other words") for a in answers)
    assert not any("glasses" in a and "eyeglasses" not in {lb.name for lb in r.labels}
                   for r in records for a in r.answers())
    assert stats.teacher_fallbacks > 0 and gen.teacher.stats.retries >= 1
