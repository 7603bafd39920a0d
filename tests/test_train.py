"""Training: recipes, a tiny two-stage run whose loss goes down, resume after SIGKILL with the same data order."""

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
from tiny_facellm import TINY_REGION, tiny_lm_folder, tiny_tower_folder
from train_records import write_records

from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.train import Recipe, RecipeError, TrainError, train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def data(root):
    return write_records(root / "data")


def tiny_recipe_dict(root: Path, steps: int = 12, save_every: int = 4) -> dict:
    model = {"vision": {"name": str(tiny_tower_folder(root, "clip"))},
             "lm_name_or_path": str(tiny_lm_folder(root, "llama")), **TINY_REGION}
    common = dict(batch_size=2, max_steps=steps, warmup_ratio=0.0, save_every=save_every, eval_every=0,
                  eval_items=2, max_length=4096)
    return {"name": "tiny-test", "seed": 0, "model": model, "stage": [
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
        assert [s.name for s in r.stages] == ["align", "instruct"]
        assert "lora" in r.stages[1].train and "lora" not in r.stages[0].train
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
    model = FaceLLMForConditionalGeneration.from_pretrained(out)
    assert model.config.lora and (out / "lora" / "adapter_model.safetensors").is_file()
    # a second run into the same folder must not silently overwrite it
    with pytest.raises(TrainError, match="--resume"):
        train(recipe, tmp_path / "run", data=[str(data)], progress=False)


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "facellm.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_resume_after_sigkill_sees_the_same_data(root, data, tmp_path):
    import tomllib  # noqa: F401  (the recipe file is TOML, written by hand below)

    spec = tiny_recipe_dict(root, steps=16, save_every=4)
    spec["stage"] = spec["stage"][:1]
    toml = tmp_path / "recipe.toml"
    toml.write_text(_to_toml(spec))
    args = ["train", "--recipe", str(toml), "--data", str(data), "--no-progress"]

    whole = _cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.wait(timeout=300) == 0, whole.stdout.read()

    cut = _cli(*args, "--out", str(tmp_path / "cut"))
    ckpts = tmp_path / "cut" / "1-align" / "checkpoints"
    deadline = time.time() + 240
    while not (ckpts / "step-000008" / "state.json").is_file():
        assert cut.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    assert not (tmp_path / "cut" / "1-align" / "final").exists()
    again = _cli(*args, "--out", str(tmp_path / "cut"), "--resume")
    log = again.communicate(timeout=300)[0]
    assert again.returncode == 0, log
    assert "resumed from step-0000" in log
    a, b = _losses(tmp_path / "whole" / "1-align"), _losses(tmp_path / "cut" / "1-align")
    assert sorted(a) == sorted(b) == list(range(1, 17))
    # the same examples in the same order, the same optimizer state: the same losses step by step
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])


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
