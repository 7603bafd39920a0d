"""The "tower" stage kind: the vision tower tuned on the records' human face labels (never a tool's estimate,
never a test record), its loss going down, resume from its checkpoint, and a model folder that carries the tuned
tower (loaded back bit for bit; cached features keyed apart from the package tower's)."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from tiny_facellm import TINY_REGION, analysis, tiny_lm_folder

from facellm.data_gen.schema import ImageRef, Label, Record, human, turn
from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.tools.photos import photo
from facellm.train import Recipe, RecipeError, train
from facellm.train.features import tower_fingerprint
from facellm.train.tower import face_targets, mirror_half, tower_sha

# photo -> (split, human labels of its one face); the test photo's labels must never be read
LABELS = {"astronaut": ("train", {"age": 40, "gender": "female", "expression": "happy"}),
          "grace_hopper": ("train", {"age": 79, "gender": "female", "expression": "neutral"}),
          "camera": ("validation", {"age": 30, "gender": "male"}),
          "tom_hanks": ("test", {"age": 60, "gender": "male"})}


def _records(folder: Path) -> Path:
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (split, labels) in LABELS.items():
        path = photo(name)
        faces = analysis(name)
        assert faces.faces, name
        fid = faces.faces[0].id
        ref = ImageRef(path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        tool_estimate = Label(name="perceived_age", value=99.0, face_id=fid, source="some-model", kind="model")
        for style in ("faceinstruct", "fairfacegpt"):  # labels repeat per style: read once
            rec = Record(id=f"{name}-{style}", image=ref, faces=faces, style=style, category="age",
                         labels=[human(k, v, fid) for k, v in labels.items()] + [tool_estimate],
                         conversations=[turn("human", "<image>\nHow old is this person?"), turn("gpt", "About 40.")],
                         generator="test-fixture", split=split, source="test", group=name)
            lines.append(rec.model_dump_json(by_alias=True))
    (folder / "shards" / "part-00000.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _recipe(root: Path, steps: int) -> Recipe:
    return Recipe.from_dict({
        "name": "tower-test", "seed": 0, "feature_cache_dir": str(root / "features"),
        "model": {"vision": {"name": "efficientnet-lite0", "feature": "stage5"},
                  "lm_name_or_path": str(tiny_lm_folder(root, "llama")), **TINY_REGION},
        "stage": [{"name": "face-tower", "kind": "tower", "train": ["vision_tower"], "max_steps": steps,
                   "batch_size": 2, "lr": 1e-3, "warmup_ratio": 0.0, "save_every": 4, "eval_every": 4,
                   "eval_items": 8, "log_every": 4}]})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tower")


def test_face_targets_read_human_labels_of_train_and_validation_once(root):
    data = _records(root / "data")
    targets = face_targets([str(data)], None)
    by = {Path(t.image).stem: t for t in targets}
    assert sorted(by) == sorted(photo(n).stem for n in ("astronaut", "grace_hopper", "camera"))  # no test photo
    assert len(targets) == 3  # two styles, one target each
    hopper = by[photo("grace_hopper").stem]
    assert (hopper.age, hopper.gender, hopper.expression, hopper.split) == (79.0, 1, 4, "train")  # not the tool's 99
    cam = by[photo("camera").stem]
    assert (cam.gender, cam.expression, cam.split) == (0, None, "validation")


@pytest.mark.timeout(900)
def test_tower_stage_learns_resumes_and_ships_its_tower(root):
    data = _records(root / "data2")
    out = root / "run"
    model_dir = train(_recipe(root, 12), out, data=[str(data)], progress=False)
    stage = out / "1-face-tower"
    with (stage / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # two faces, twelve steps: it fits them
    assert rows[-1]["eval_gender_acc"] != "" and rows[-1]["eval_age_mae"] != ""

    tuned = FaceLLMForConditionalGeneration.from_pretrained(model_dir)
    assert tuned.config.vision_tuned == tower_sha(tuned.vision_tower)
    plain = FaceLLMForConditionalGeneration(tuned.config.__class__(**{
        **tuned.config.to_dict(), "vision_tuned": None}))
    w = "net._blocks.0._depthwise_conv.weight"
    assert not torch.equal(tuned.vision_tower.state_dict()[w], plain.vision_tower.state_dict()[w])
    assert tower_fingerprint(tuned) != tower_fingerprint(plain)  # never reads the package tower's cached features

    # resume: drop the finished folder and the last checkpoint; the same call continues from step 8
    shutil.rmtree(stage / "final")
    shutil.rmtree(stage / "checkpoints" / "step-000012")
    again = train(_recipe(root, 12), out, data=[str(data)], progress=False)
    with (stage / "metrics.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == list(range(1, 13))  # rows 9-12 redone once, none doubled
    assert FaceLLMForConditionalGeneration.from_pretrained(again).config.vision_tuned


def test_mirror_half_flips_image_and_face_mask_together_and_repeats_by_seed():
    pixels = torch.zeros(16, 3, 4, 6)
    pixels[:, :, :, 0] = 1.0  # a bright left column
    masks = torch.zeros(16, 2, 3)
    masks[:, :, 0] = 1.0  # the face on the left
    p, m = mirror_half(pixels, masks, seed=7)
    flipped = p[:, 0, 0, -1] == 1.0
    assert 0 < int(flipped.sum()) < 16  # some of the batch, not all
    assert torch.equal(flipped, m[:, 0, -1] == 1.0)  # each mirrored image has its mask mirrored too
    assert torch.equal(p[~flipped], pixels[~flipped]) and pixels[:, 0, 0, -1].eq(0).all()  # input untouched
    p2, m2 = mirror_half(pixels, masks, seed=7)
    assert torch.equal(p, p2) and torch.equal(m, m2)  # a resumed step mirrors the same faces


def test_tower_stage_trains_only_the_tower():
    with pytest.raises(RecipeError, match="tower stage"):
        Recipe.from_dict({"name": "x", "stage": [{"name": "t", "kind": "tower", "train": ["projector"]}]})
    with pytest.raises(RecipeError, match="kind"):
        Recipe.from_dict({"name": "x", "stage": [{"name": "t", "kind": "vision"}]})


def test_export_writes_a_model_from_a_stopped_stage(root):
    from facellm.train.trainer import export_checkpoint

    data = _records(root / "data3")
    recipe = _recipe(root, 4)
    spec = recipe.to_dict()
    spec["stage"] = spec.pop("stages") + [{
        "name": "align", "train": ["projector", "region_encoder"], "mixture": {"faceinstruct": 1.0}, "max_steps": 4,
        "batch_size": 1, "save_every": 2, "eval_every": 0, "eval_items": 1, "lr": 1e-3}]
    spec["stage"][0].pop("kind")
    spec["stage"][0]["kind"] = "tower"
    out = root / "run-export"
    train(Recipe.from_dict(spec), out, data=[str(data)], progress=False)
    shutil.rmtree(out / "2-align" / "final")  # as if stopped after its step-4 checkpoint
    folder = export_checkpoint(out, root / "exported")
    info = (folder / "training.json").read_text()
    assert '"partial": true' in info and '"steps": 4' in info
    model = FaceLLMForConditionalGeneration.from_pretrained(folder)
    assert model.config.vision_tuned == tower_sha(model.vision_tower)
