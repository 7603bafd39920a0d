"""`facellm ask` and the default model folder, end to end on the real default model (untrained parts)."""

from __future__ import annotations

import json

from test_cli import run

from facellm.default_model import default_model_dir, is_trained, prepare_default_model
from facellm.tools.photos import photo


def test_default_model_folder_is_built_once_and_reused():
    folder = prepare_default_model()
    assert folder == default_model_dir()
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (folder / name).is_file(), name
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert prepare_default_model() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # up to date: not rebuilt
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "facellm" and cfg["use_region_encoder"]
    assert isinstance(is_trained(folder), bool)


def test_ask_answers_about_a_photo():
    out = run("ask", str(photo("grace_hopper")), "Describe the person.", "--max-new-tokens", "12", "--json")
    answer = json.loads(out.stdout)
    assert answer["answer"].strip() and answer["question"] == "Describe the person."


def test_ask_bad_inputs_fail_clearly(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = run("ask", str(bad), "Who is this?", check=False)
    assert out.returncode == 1 and "facellm: error:" in out.stderr and "Traceback" not in out.stderr
    out = run("ask", "Who is this?", check=False)
    assert out.returncode == 2 and "at least one image" in out.stderr
