"""Training: recipes, a tiny two-stage run whose loss goes down, resume after Ctrl-C and SIGKILL with the same data
order, bf16 detection and fallback, the tower-feature cache (cached == uncached), packed conversations' labels."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_facellm import TINY_REGION, tiny_lm_folder, tiny_tower_folder
from train_records import write_records

from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.processor import IGNORE_INDEX
from facellm.train import Recipe, RecipeError, TrainError, train
from facellm.train.data import AnalysisCache, LengthGroupedOrder, MixtureOrder, load_examples, pack_examples
from facellm.train.features import FeatureCache
from facellm.train.precision import choose_precision, cpu_bf16_flags


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def data(root):
    return write_records(root / "data")


def tiny_recipe_dict(root: Path, steps: int = 12, save_every: int = 4) -> dict:
    model = {"vision": {"name": str(tiny_tower_folder(root, "clip"))},
             "lm_name_or_path": str(tiny_lm_folder(root, "llama")), **TINY_REGION}
    cache = str(root / "features")  # not $FACELLM_HOME: tests leave the user's cache alone
    common = dict(batch_size=2, max_steps=steps, warmup_ratio=0.0, save_every=save_every, eval_every=0,
                  eval_items=2, max_length=4096)
    return {"name": "tiny-test", "seed": 0, "model": model, "feature_cache_dir": cache, "stage": [
        {"name": "align", "train": ["projector", "region_encoder"], "mixture": {"facecaption": 1.0},
         "lr": 3e-3, **common},
        {"name": "instruct", "train": ["lora", "projector", "region_encoder"],
         "mixture": {"fairfacegpt": 1.0, "faceinstruct": 1.0}, "lr": 3e-3,
         "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **common}]}


def _losses(folder: Path) -> dict[int, float]:
    with (folder / "metrics.csv").open() as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


def test_builtin_recipes_load_and_bad_ones_fail_clearly(tmp_path):
    for name in ("default", "tiny", "gpu-large"):
        r = Recipe.load(name)
        lm = [s for s in r.stages if s.kind == "lm"]
        assert [s.name for s in lm] == ["align", "instruct"]
        assert "lora" in lm[1].train and "lora" not in lm[0].train
    # real: the tower learns faces, then one LM stage with the attribute tokens from its start
    real = Recipe.load("real").stages
    assert [(s.name, s.kind) for s in real] == [("face-tower", "tower"), ("instruct", "lm")]
    assert "lora" in real[1].train and real[1].attribute_tokens
    with pytest.raises(RecipeError, match="no recipe"):
        Recipe.load("no-such-recipe")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[stage]]\nname = "a"\ntrain = ["projector", "wings"]\n')
    with pytest.raises(RecipeError, match="wings"):
        Recipe.load(bad)
    bad.write_text('name = "x"\n[[stage]]\nname = "a"\nlearning_rate = 1\n')
    with pytest.raises(RecipeError, match="learning_rate"):
        Recipe.load(bad)


def test_tiny_two_stage_run_learns_and_saves_a_model(root, data, tmp_path):
    recipe = Recipe.from_dict(tiny_recipe_dict(root, steps=10, save_every=5))
    recipe.stages[0].eval_every = 5
    out = train(recipe, tmp_path / "run", data=[str(data)], progress=False)
    for stage in ("1-align", "2-instruct"):
        losses = _losses(tmp_path / "run" / stage)
        assert len(losses) == 10
        first, last = sum(list(losses.values())[:3]) / 3, sum(list(losses.values())[-3:]) / 3
        assert last < first, (stage, losses)
    with (tmp_path / "run" / "1-align" / "metrics.csv").open() as fh:
        assert any(r["eval_loss"] for r in csv.DictReader(fh))  # held-out loss was measured
    assert (tmp_path / "run" / "1-align" / "tb").is_dir()
    assert out.resolve() == (tmp_path / "run" / "2-instruct" / "final").resolve()
    info = json.loads((out / "training.json").read_text())
    assert info["steps"] == 10 and info["train_records"] == 18 and info["held_out_records"] == 6
    assert info["precision"] == choose_precision("auto").label
    model = FaceLLMForConditionalGeneration.from_pretrained(out)
    assert model.config.lora and (out / "lora" / "adapter_model.safetensors").is_file()
    # the same call again finds every stage done (nothing retrained, nothing overwritten) ...
    before = (out / "lora" / "adapter_model.safetensors").stat().st_mtime_ns
    assert train(recipe, tmp_path / "run", data=[str(data)], progress=False).resolve() == out.resolve()
    assert (out / "lora" / "adapter_model.safetensors").stat().st_mtime_ns == before
    # ... and another recipe into the same folder is refused
    recipe.stages[0].lr = 1e-4
    with pytest.raises(TrainError, match="different recipe"):
        train(recipe, tmp_path / "run", data=[str(data)], progress=False)


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # a shell that starts the test run in the background makes SIGINT ignored, and children inherit that:
    # give the child the default disposition so that Ctrl-C reaches it as it would from a terminal
    return subprocess.Popen([sys.executable, "-m", "facellm.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 900) -> None:
    deadline = time.time() + limit
    while not path.is_file():
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.timeout(1800)  # four CLI runs, each loading its models: minutes on a crowded 2-core machine
def test_resume_after_ctrl_c_and_sigkill_sees_the_same_data(root, data, tmp_path):
    spec = tiny_recipe_dict(root, steps=16, save_every=4)
    spec["stage"] = spec["stage"][:1]
    spec["stage"][0]["batch_size"] = 1  # one process, one example per step: slow enough to stop mid-way
    toml = tmp_path / "recipe.toml"
    toml.write_text(_to_toml(spec))
    args = ["train", "--recipe", str(toml), "--data", str(data), "--no-progress"]

    whole = _cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.wait(timeout=900) == 0, whole.stdout.read()

    ckpts = tmp_path / "cut" / "1-align" / "checkpoints"
    cut = _cli(*args, "--out", str(tmp_path / "cut"))
    _wait_for(ckpts / "step-000004" / "state.json", cut)
    cut.send_signal(signal.SIGINT)  # Ctrl-C: the step in progress ends, a checkpoint is written, exit 130
    log = cut.communicate(timeout=600)[0]
    assert cut.returncode == 130, log
    assert "run the same command again to continue" in log
    stopped = json.loads(max(ckpts.glob("step-*/state.json")).read_text())["step"]
    assert 4 <= stopped < 16

    again = _cli(*args, "--out", str(tmp_path / "cut"))  # the same command: no --resume needed
    _wait_for(ckpts / f"step-{((stopped // 4) + 2) * 4:06d}" / "state.json", again)
    again.send_signal(signal.SIGKILL)
    again.wait()
    assert not (tmp_path / "cut" / "1-align" / "final").exists()
    last = _cli(*args, "--out", str(tmp_path / "cut"))
    log = last.communicate(timeout=900)[0]
    assert last.returncode == 0, log
    assert "resumed from step-0000" in log
    a, b = _losses(tmp_path / "whole" / "1-align"), _losses(tmp_path / "cut" / "1-align")
    assert sorted(a) == sorted(b) == list(range(1, 17))
    # the same examples in the same order, the same optimizer state: the same losses step by step
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])


# ------------------------------------------------------------------ throughput parts
def test_precision_is_bf16_only_with_native_bf16_and_says_why():
    amx = "flags\t\t: fpu sse avx512f avx512bw amx_tile amx_bf16 avx512_bf16\n"
    plain = "flags\t\t: fpu sse avx2 avx512f avx512bw\n"
    assert cpu_bf16_flags(amx) == ["amx_bf16", "avx512_bf16"] and cpu_bf16_flags(plain) == []
    p = choose_precision("auto", device="cpu", cpuinfo=amx)
    assert p.mode == "bf16" and "amx_bf16" in p.reason and p.label == "bf16 autocast"
    p = choose_precision("auto", device="cpu", cpuinfo=plain)
    assert p.mode == "no" and "lacks" in p.reason and p.label == "fp32"
    assert choose_precision("bf16", device="cpu", cpuinfo=plain).mode == "no"  # asked, but would be emulated
    assert choose_precision("fp32", device="cpu", cpuinfo=amx).mode == "no"
    with pytest.raises(ValueError, match="mixed_precision"):
        choose_precision("int4", device="cpu")


def test_bf16_autocast_step_keeps_fp32_weights_and_matches_fp32(root, data):
    model = _tiny(root)
    ex = load_examples([data], ("train",))[:2]
    batch = _batch_of(model, ex, root)
    loss32 = model(**batch).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = model(**batch).loss
    loss16.backward()
    assert abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert model.projector.fc1.weight.grad.dtype == torch.float32


def _tiny(root: Path) -> FaceLLMForConditionalGeneration:
    from tiny_facellm import tiny_model

    return tiny_model(root, "llama", "clip")


def _batch_of(model, examples, root: Path, features=None):
    from facellm.train.trainer import make_batch

    cache = AnalysisCache(model.processor, root / "analysis", [])
    return make_batch(model, examples, cache, features, 4096, "cpu")


def test_cached_tower_features_give_the_same_loss(root, data, tmp_path):
    model = _tiny(root)
    ex = load_examples([data], ("train",))[:3]
    plain = _batch_of(model, ex, root)
    cache = FeatureCache(model, tmp_path / "feat")
    cached = _batch_of(model, ex, root, cache)
    assert "pixel_values" in plain and "pixel_values" not in cached and "vision_features" in cached
    assert cache.misses == len({e.sha256 for e in ex}) and cache.hits == 0
    for k in ("input_ids", "labels", "region_points", "face_mask"):
        assert torch.equal(plain[k], cached[k]), k
    with torch.no_grad():
        a, b = model(**plain).loss.item(), model(**cached).loss.item()
    assert abs(a - b) < 1e-3 * abs(a), (a, b)  # fp16 storage of the features
    # a new cache over the same folder reads the features back from disk instead of running the tower
    again = FeatureCache(model, tmp_path / "feat")
    again.get([(e.sha256, e.image) for e in ex])
    assert again.hits == len({e.sha256 for e in ex}) and again.misses == 0
    # a tower that trains cannot be cached
    model.config.freeze_vision = False
    with pytest.raises(ValueError, match="trains"):
        FeatureCache(model, tmp_path / "feat2")


def test_packed_conversation_labels_every_answer_and_shows_the_image_once(root, data):
    model = _tiny(root)
    records = load_examples([data], ("train",))
    # the fixture repeats each question (same category) per photo and style: such records never share a pack,
    # or a later turn could copy an earlier answer instead of looking at the image
    assert all(p.records == 1 for p in pack_examples(records, 4, 10_000, 64))
    for e in records:  # make the copies different questions
        e.category += "-" + e.id.rsplit("-", 1)[-1]
    packed = pack_examples(records, max_records=4, max_tokens=10_000, image_tokens=64)
    multi = [p for p in packed if p.records > 1]
    assert multi and sum(p.records for p in packed) == len(records)
    by_id = {e.id: e for e in records}
    for p in multi:  # one image's records of one style
        parts = [by_id[i] for i in p.id.split("+")]
        assert len({(e.sha256, e.style) for e in parts}) == 1
        assert len({e.category for e in parts}) == len(parts)
    assert all(p.records == 1 for p in pack_examples(records, 4, 100, 64))  # over the token limit: unpacked
    p = multi[0]
    parts = [by_id[i] for i in p.id.split("+")]
    batch = _batch_of(model, [p], root)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    tok = model.processor.tokenizer
    learned = tok.decode(ids[labels != IGNORE_INDEX])
    for e in parts:
        assert e.answer in learned
    assert int((ids == model.config.image_token_id).sum()) == 64  # one image span for all the records
    assert model(**batch).loss.item() > 0
    # the questions themselves are never labelled
    assert not any(e.messages[0]["content"][-1]["text"] in learned for e in parts)


def test_length_grouped_order_is_a_permutation_of_the_mixture_and_groups_lengths(data):
    ex = load_examples([data], ("train",))
    base = MixtureOrder(ex, {"facecaption": 1.0, "fairfacegpt": 1.0, "faceinstruct": 1.0}, seed=3)
    lengths = [len(e.answer) for e in ex]
    grouped = LengthGroupedOrder(base, lengths, batch=2, window_batches=3)
    window = [grouped[i] for i in range(6)]
    assert sorted(window) == sorted(base[i] for i in range(6))
    for k in range(0, 6, 2):  # each batch of 2: neighbours in the window's length order
        a, b = sorted(lengths[i] for i in window[k:k + 2])
        between = [lengths[i] for i in window if a < lengths[i] < b]
        assert not between
    assert [grouped[i] for i in range(6)] == window  # a pure function of the position


def _to_toml(spec: dict) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines = [f"{k} = {val(v)}" for k, v in spec.items() if k not in ("model", "stage")]
    lines.append("[model]")
    lines += [f"{k} = {val(v)}" for k, v in spec["model"].items()]
    for st in spec["stage"]:
        lines.append("[[stage]]")
        lines += [f"{k} = {val(v)}" for k, v in st.items()]
    return "\n".join(lines) + "\n"


def test_two_image_records_give_each_image_its_own_path():
    from facellm.train.data import _to_messages

    rec = {"conversations": [{"from": "human", "value": "<image>\n(image_1)<image>\n(image_2)Same person?"},
                             {"from": "gpt", "value": "No."}],
           "meta": {"images": ["/photos/a.jpg", "images/b.jpg"]}}  # data_gen: relative = inside the data folder
    parts = _to_messages(rec, "/photos/a.jpg", Path("/data/run"))[0]["content"]
    assert [p["image"] for p in parts if p["type"] == "image"] == ["/photos/a.jpg", "/data/run/images/b.jpg"]


def test_human_attributes_only_drops_answers_that_rest_on_a_tool(tmp_path):
    """A FER2013 face's perceived age is a tool's guess; a UTKFace face's is a human label. An attribute-token
    stage keeps only the second kind (recipe `real`), so the LM is never taught to contradict its own reading."""
    from facellm.train.data import _tool_attribute

    human_age = [{"name": "age", "value": 70, "kind": "human"}]
    tool_age = [{"name": "perceived_age", "value": 26, "kind": "model"}, {"name": "expression", "value": "sad",
                                                                          "kind": "human"}]
    assert not _tool_attribute({"category": "age_number", "labels": human_age})
    assert _tool_attribute({"category": "age_number", "labels": tool_age})
    assert _tool_attribute({"category": "gender", "labels": tool_age})
    assert not _tool_attribute({"category": "expression_word", "labels": tool_age})
    assert not _tool_attribute({"category": "counting", "labels": tool_age})  # not an attribute question
    assert Recipe.load("real").stages[-1].human_attributes_only
