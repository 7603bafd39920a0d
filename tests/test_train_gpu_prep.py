"""The GPU run's recipe and data packing (bench/train_gpu): comparable with the CPU `real` run, and the stripped
records give the trainer exactly the examples the full records give. No GPU, no real data needed."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

from facellm.train.data import read_examples
from facellm.train.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]


def _prep():
    spec = importlib.util.spec_from_file_location("gpu_prep", ROOT / "bench" / "train_gpu" / "prep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_real_sees_as_many_examples_as_real_with_the_same_data_and_local_parts():
    gpu, cpu = Recipe.load("gpu-real"), Recipe.load("real")
    assert gpu.data == cpu.data and gpu.analysis_cache == cpu.analysis_cache
    for g, c in zip(gpu.stages, cpu.stages, strict=True):
        assert g.max_steps * g.batch_size * g.grad_accum == c.max_steps * c.batch_size * c.grad_accum
        assert (g.mixture, g.pack, g.train) == (c.mixture, c.pack, c.train)
    assert gpu.model["lm_name_or_path"] == cpu.model["lm_name_or_path"]  # no hub id: it runs offline
    assert gpu.model["vision"]["name"] == "efficientnet-lite0"
    assert next(s for s in gpu.stages if s.lora).lora["r"] == 64 and gpu.model["region_dim"] == 512  # gpu-large's sizes


def _record(i: int, split: str, image: str, extra: list[str] | None = None) -> dict:
    rec = {"record_version": 5, "id": f"r{i}", "style": "agent" if extra else "faceinstruct", "split": split,
           "group": f"g{i}", "category": "age", "tools": ["attributes"] if extra else [], "source": "utkface",
           "image": {"path": image, "sha256": f"{i:064x}", "width": 200, "height": 200},
           "faces": {"faces": [{"id": 1, "box": {"x1": 1.123456, "y1": 2.0, "x2": 3.0, "y2": 4.0}}] * (i % 3)},
           "labels": {"age": 30}, "generator": "x",
           "conversations": [{"from": "human", "value": "<image>\n" + ("<image>\nSame person?" if extra else
                                                                        "How old does this person look?")},
                             {"from": "gpt", "value": "About 30 years old (a perceived-age estimate)."}],
           "meta": {"unit": "u", **({"images": extra} if extra else {})}}
    return rec


def test_stripped_records_read_as_the_same_examples_with_device_paths(tmp_path):
    prep = _prep()
    src = tmp_path / "facedata-part0"
    (src / "shards").mkdir(parents=True)
    recs = [_record(1, "train", "/work/shared/data/utkface/a.jpg"),
            _record(2, "validation", "/work/shared/data/fer2013/train/happy/b.jpg"),
            _record(3, "train", "images/composites/c.jpg", extra=["images/composites/c.jpg",
                                                                  "/work/shared/data/celeba/d.jpg"])]
    (src / "shards" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    root = Path("/tmp/dev")
    out = tmp_path / "out" / "shards"
    out.mkdir(parents=True)
    lines = [json.dumps(prep.stripped(r, src, root)) for r in recs]
    assert all(len(s) < len(json.dumps(r)) for s, r in zip(lines, recs))
    (out / "part-00000.jsonl").write_text("\n".join(lines) + "\n")

    full, small = read_examples([src]), read_examples([out.parent])
    assert len(full) == len(small) == 3
    for f, s in zip(full, small):
        assert (f.id, f.style, f.split, f.sha256, f.group, f.tools, f.answer, f.category, f.num_faces) == \
               (s.id, s.style, s.split, s.sha256, s.group, s.tools, s.answer, s.category, s.num_faces)
        assert s.image.startswith("/tmp/dev/img/")
    assert small[0].image == "/tmp/dev/img/shared/utkface/a.jpg"
    assert small[2].image == "/tmp/dev/img/facedata-part0/images/composites/c.jpg"
    # a relative meta.images path is resolved against its data folder (the first <image> is the record's photo)
    parts = [p["image"] for m in small[2].messages if isinstance(m["content"], list)
             for p in m["content"] if p.get("type") == "image"]
    assert parts == [small[2].image, "/tmp/dev/img/shared/celeba/d.jpg"]


def test_analysis_rounding_keeps_structure_and_moves_points_under_a_thousandth_of_a_pixel():
    prep = _prep()
    rnd = random.Random(0)
    analysis = {"faces": [{"box": {"x1": rnd.uniform(0, 200)}, "mesh478": {"points": [[rnd.uniform(0, 200)] * 3
                                                                                       for _ in range(5)]},
                           "score": 0.87654321, "id": 1, "detector": "mp"}]}
    r = prep._round(analysis)
    assert r["faces"][0]["id"] == 1 and r["faces"][0]["detector"] == "mp"
    a, b = analysis["faces"][0]["mesh478"]["points"], r["faces"][0]["mesh478"]["points"]
    assert max(abs(x - y) for pa, pb in zip(a, b) for x, y in zip(pa, pb)) <= 0.0005 + 1e-12
