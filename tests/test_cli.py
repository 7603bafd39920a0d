"""The `facellm` command as a user runs it: a real process, real photos."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from facellm.tools.photos import photo

FACELLM = [sys.executable, "-m", "facellm.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*FACELLM, *args], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"facellm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_analyze_astronaut_json_has_everything(tmp_path: Path):
    out = tmp_path / "drawn.png"
    proc = run("tools", "analyze", str(photo("astronaut")), "--json", "--draw", str(out))
    data = json.loads(proc.stdout)
    assert data["schema_version"] == "1.0" and data["num_faces"] == 1
    face = data["faces"][0]
    assert face["id"] == 1
    assert len(face["mesh478"]["points"]) == 478 and len(face["lmk68"]["points"]) == 68
    assert face["parse"]["regions"]["skin"]["area"] > 1000
    assert abs(face["pose"]["yaw"]) < 25 and abs(face["pose"]["pitch"]) < 25
    age = face["attributes"]["perceived_age"]
    assert age["kind"] == "model estimate" and 15 < age["value"] < 70 and age["source"]
    assert face["attributes"]["perceived_gender"]["kind"] == "model estimate"
    assert face["expression"]["value"] == "happy" and face["expression"]["kind"] == "model estimate"
    assert face["cues"]["smile"]["active"] is True
    assert face["quality"]["usable"] is True
    drawn = np.asarray(Image.open(out).convert("RGB"))
    assert drawn.shape == (512, 512, 3)
    assert np.abs(drawn.astype(int) - np.asarray(Image.open(photo("astronaut")).convert("RGB"), int)).sum() > 0


def test_plain_text_output_says_estimates():
    proc = run("tools", "attributes", str(photo("grace_hopper")))
    assert "1 face(s)" in proc.stdout
    assert "perceived age" in proc.stdout and "estimate" in proc.stdout


def test_detect_group_photo_counts_six():
    proc = run("tools", "detect", str(photo("group")), "--json", "--compact")
    data = json.loads(proc.stdout)
    assert data["num_faces"] == 6
    xs = [(f["box"]["x1"] + f["box"]["x2"]) / 2 for f in data["faces"]]
    assert xs == sorted(xs) and [f["id"] for f in data["faces"]] == [1, 2, 3, 4, 5, 6]


def test_bad_input_gives_clear_error(tmp_path: Path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not really a jpeg")
    proc = run("tools", "analyze", str(bad), check=False)
    assert proc.returncode == 1
    assert "facellm: error:" in proc.stderr and "not an image" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("tools", "analyze", str(tmp_path / "missing.png"), check=False)
    assert proc.returncode == 1 and "no such file" in proc.stderr


def test_no_face_is_an_empty_result_not_an_error():
    proc = run("tools", "analyze", str(photo("mask_blue")), "--json")
    assert json.loads(proc.stdout)["num_faces"] == 0


def test_gallery_commands_round_trip(tmp_path: Path):
    db = str(tmp_path / "g.sqlite")
    mirrored = tmp_path / "mirrored.png"
    Image.open(photo("astronaut")).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    assert "is empty" in run("gallery", "--db", db, "list").stdout
    out = run("gallery", "--db", db, "enroll", "Eileen", str(photo("astronaut"))).stdout
    assert "enrolled Eileen: 1 new photo" in out
    assert "face 1: Eileen" in run("gallery", "--db", db, "identify", str(mirrored)).stdout
    assert "face 1: unknown" in run("gallery", "--db", db, "identify", str(photo("grace_hopper"))).stdout
    run("gallery", "--db", db, "rename", "Eileen", "Commander Collins")
    people = json.loads(run("gallery", "--db", db, "--json", "list").stdout)
    assert [p["name"] for p in people] == ["Commander Collins"]
    bad = run("gallery", "--db", db, "enroll", "Someone", str(photo("group")), check=False)
    assert bad.returncode == 1 and "face" in bad.stderr and "Traceback" not in bad.stderr
    assert "removed Commander Collins" in run("gallery", "--db", db, "remove", "Commander Collins").stdout


def test_verify_command():
    out = run("tools", "verify", str(photo("astronaut")), str(photo("grace_hopper"))).stdout
    assert out.startswith("different people")


def test_enroll_errors_name_the_flag_the_user_types(tmp_path: Path):
    db = str(tmp_path / "g.sqlite")
    many = run("gallery", "--db", db, "enroll", "Someone", str(photo("group")), check=False)
    assert many.returncode == 1 and "Traceback" not in many.stderr
    assert "--face N (1..6" in many.stderr and "face_id" not in many.stderr and "nothing was enrolled" in many.stderr
    wrong = run("gallery", "--db", db, "enroll", "Someone", str(photo("group")), "--face", "9", check=False)
    assert wrong.returncode == 1 and "--face 9 does not exist" in wrong.stderr and "face_id" not in wrong.stderr
    assert "is empty" in run("gallery", "--db", db, "list").stdout  # nothing was enrolled, as it says
    assert "enrolled Someone: 1 new photo" in run("gallery", "--db", db, "enroll", "Someone", str(photo("group")),
                                                  "--face", "2").stdout


def test_help_texts_say_defaults_and_what_each_command_does():
    serve = run("serve", "--help").stdout
    assert "port to listen on (default 8000)" in serve
    gallery = run("gallery", "--help").stdout
    for action in ("enroll", "list", "rename", "remove", "identify"):
        line = next(ln for ln in gallery.splitlines() if ln.strip().startswith(action + " "))
        assert len(line.split()) > 2, f"`gallery {action}` has no help text: {line!r}"
    assert "cannot be undone" in run("gallery", "remove", "--help").stdout
    assert "the new name" in run("gallery", "rename", "--help").stdout


def test_group_photo_faces_have_distinct_positions_and_no_one_year_age_ranges():
    out = run("tools", "attributes", str(photo("group"))).stdout
    heads = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("face ")]
    assert len(heads) == 6
    places = [h.split("(", 1)[1].split(")", 1)[0] for h in heads]
    assert len(set(places)) == 6 and places[0] == "left" and places[-1] == "right", places
    assert not re.search(r"\b(\d+)-\1 years\b", out), out
    assert out.count("perceived age ~") == 6


def test_agent_describes_group_faces_with_distinct_positions():
    proc = run("ask", "--agent", "--no-model", str(photo("group")), "Describe the faces in this photo")
    answer = proc.stdout
    places = re.findall(r"Face \d+ \(([^)]*)\)", answer)
    assert len(places) == 6 and len(set(places)) == 6, answer
    assert not re.search(r"\b(\d+)-\1 years\b", answer), answer
