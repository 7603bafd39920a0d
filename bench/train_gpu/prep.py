"""Pack a subset of the CPU `real` run's records for a GPU machine that has no network and a 64 MiB upload.

    python bench/train_gpu/prep.py --run runs/real --images 1200 --out .h9dev/c/data --root /tmp/h9/d

Reads the records the CPU run uses (its data.json snapshot of the data_gen shards), never split=test, and writes:
- shards/part-00000.jsonl: every train record about a seeded sample of ``--images`` train photos (all styles),
  stripped to the fields the trainer reads (``faces`` kept only as the face count), image paths rewritten under
  ``--root``; then the CPU run's own held-out evaluation records (the 24 its instruct stage evaluates, in the
  order it evaluates them, so a GPU run can report the loss on exactly those); a two-photo record goes only
  when both photos have a tool analysis (the device has no face tools);
- img/...: the photos (bytes unchanged, so their sha256 keys stay valid);
- cache/analysis/<sha256>.json: the face tools' analyses of those photos, coordinates rounded to 0.001 px
  (the JSON shrinks 2.5x; landmark detectors are not that precise);
- subset.json: counts, and the CPU run's evaluation record ids.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

ROUND = 3


def _round(x):
    if isinstance(x, float):
        return round(x, ROUND)
    if isinstance(x, list):
        return [_round(v) for v in x]
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def _abs(path: str, folder: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else folder / p)


def device_path(path: str, root: Path) -> str:
    """Where a photo lands on the device: the part after /work/shared/data/ or after the data folder."""
    p = Path(path)
    for base, tag in ((Path("/work/shared/data"), "shared"),):
        if p.is_relative_to(base):
            return str(root / "img" / tag / p.relative_to(base))
    # data_gen's own images (composites, padded crops): .../facedata-partN/images/...
    parts = p.parts
    i = max(k for k, s in enumerate(parts) if s.startswith("facedata-"))
    return str(root / "img" / parts[i] / Path(*parts[i + 1:]))


def stripped(rec: dict, folder: Path, root: Path) -> dict:
    out = {k: rec[k] for k in ("record_version", "id", "style", "split", "group", "conversations", "tools",
                               "category", "source") if k in rec}
    out["image"] = {"path": device_path(_abs(rec["image"]["path"], folder), root), "sha256": rec["image"]["sha256"]}
    out["faces"] = {"faces": [{}] * len((rec.get("faces") or {}).get("faces") or [])}  # the count is all it reads
    images = (rec.get("meta") or {}).get("images")
    if images:
        out["meta"] = {"images": [device_path(_abs(p, folder), root) for p in images]}
    return out


def cpu_eval_ids(run: Path, data: list[str], items: int, seed: int) -> list[str]:
    """The held-out record ids the CPU run evaluates, in its order (Trainer.evaluate's seeded sample)."""
    from facellm.train.data import read_examples, select_splits

    snapshot = json.loads((run / "data.json").read_text())
    examples = read_examples(data, snapshot)
    select_splits(examples, ("train",))
    held = select_splits(examples, ("validation",))
    return [e.id for e in random.Random(seed).sample(held, min(items, len(held)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/real", help="the CPU run folder (its data.json and recipe.json)")
    ap.add_argument("--images", type=int, default=1200, help="train photos to take (all their train records)")
    ap.add_argument("--eval-items", type=int, default=24, help="the CPU recipe's instruct eval_items")
    ap.add_argument("--analysis-cache", default="/work/datagen/cache/analysis")
    ap.add_argument("--root", default="/tmp/h9/d", help="where the folder will be on the device")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    run, out, root = Path(a.run), Path(a.out), Path(a.root)
    saved = json.loads((run / "recipe.json").read_text())
    data, seed = saved["data"], saved["recipe"]["seed"]
    snapshot = json.loads((run / "data.json").read_text())

    eval_ids = cpu_eval_ids(run, data, a.eval_items, seed)
    print(f"CPU run's held-out evaluation: {len(eval_ids)} records", flush=True)

    by_image: dict[str, list[tuple[dict, Path]]] = {}
    held: dict[str, tuple[dict, Path]] = {}
    for shard, limit in snapshot.items():
        folder = Path(shard).parent.parent
        with open(shard, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if n > limit:
                    break
                if '"split":"test"' in line:
                    continue
                rec = json.loads(line)
                if rec.get("split") == "train":
                    by_image.setdefault(rec["image"]["sha256"], []).append((rec, folder))
                elif rec.get("split") == "validation" and rec["id"] in eval_ids:
                    held[rec["id"]] = (rec, folder)
    missing = [i for i in eval_ids if i not in held]
    if missing:
        sys.exit(f"CPU eval records not found in the snapshot: {missing[:3]}")

    shas = sorted(by_image)
    random.Random(a.seed).shuffle(shas)
    chosen = shas[: a.images]
    if out.exists():
        shutil.rmtree(out)
    (out / "shards").mkdir(parents=True)
    (out / "cache" / "analysis").mkdir(parents=True)
    photos: dict[str, str] = {}  # device path -> source path
    styles: dict[str, int] = {}
    n_train = skipped = 0
    analysed: set[str] = set()  # the photos whose tool analyses go along (two-photo records need both)
    with open(out / "shards" / "part-00000.jsonl", "w", encoding="utf-8") as fh:
        records = [rf for sha in chosen for rf in by_image[sha]] + [held[i] for i in eval_ids]
        for rec, folder in records:
            partners = [_abs(p, folder) for p in (rec.get("meta") or {}).get("images") or []]
            shas = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in partners} - {rec["image"]["sha256"]}
            if any(not (Path(a.analysis_cache) / f"{sha}.json").is_file() for sha in shas):
                if rec["split"] != "train":
                    sys.exit(f"held-out record {rec['id']}: a photo has no tool analysis")
                skipped += 1  # the trainer would run the face tools on the device for that photo
                continue
            analysed |= shas
            s = stripped(rec, folder, root)
            for src in [_abs(rec["image"]["path"], folder)] + [_abs(p, folder) for p in
                                                               (rec.get("meta") or {}).get("images") or []]:
                photos[device_path(src, root)] = src
            fh.write(json.dumps(s, separators=(",", ":")) + "\n")
            if rec["split"] == "train":
                n_train += 1
                styles[rec["style"]] = styles.get(rec["style"], 0) + 1
    img_bytes = 0
    for dev, src in photos.items():
        dest = out / Path(dev).relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        img_bytes += dest.stat().st_size
    an_bytes = 0
    for sha in set(chosen) | {held[i][0]["image"]["sha256"] for i in eval_ids} | analysed:
        src = Path(a.analysis_cache) / f"{sha}.json"
        if not src.is_file():
            sys.exit(f"no tool analysis for {sha}: the trainer would have to run the face tools on the device")
        text = json.dumps(_round(json.loads(src.read_text())), separators=(",", ":"))
        (out / "cache" / "analysis" / f"{sha}.json").write_text(text)
        an_bytes += len(text)
    info = {"train_records": n_train, "train_photos": len(chosen), "styles": styles,
            "validation_records": len(eval_ids), "skipped_no_partner_analysis": skipped,
            "cpu_eval_ids": eval_ids, "photos_copied": len(photos),
            "photo_bytes": img_bytes, "analysis_json_bytes": an_bytes, "root": str(root), "cpu_run": str(run),
            "coordinates_rounded_to": 10 ** -ROUND}
    (out / "subset.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != "cpu_eval_ids"}, indent=1))


if __name__ == "__main__":
    main()
