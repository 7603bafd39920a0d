"""One training run of a recipe on a lent GPU, evaluated on exactly the CPU run's held-out records.

    python bench/train_gpu/run_device.py --recipe gpu-real --data D --analysis-cache D/cache/analysis \
        --out RUN --summary OUT/summary.json

The trainer is facellm's own (facellm.train.trainer.Trainer); one thing differs: the held-out loss is computed
on the data's validation records in the order they are stored, in batches of ``--eval-batch``. prep.py stores
the CPU `real` run's evaluation records in the order that run evaluates them (batches of 4), so both runs'
``eval_loss`` are the same average over the same records, batched alike. Writes a summary: GPU, precision,
per stage steps, examples, records, tokens, wall time, tokens/s, records/hour, last held-out loss, peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import torch

from facellm.train.recipe import Recipe
from facellm.train.trainer import Trainer, TrainInterrupted


class CpuComparableTrainer(Trainer):
    eval_batch = 4

    def evaluate(self, model, held, cache, stage):
        k = min(stage.eval_items, len(held))
        want = held[:k]
        # Trainer.evaluate takes a seeded sample of k of them; lay them out so that sample is `want`, in order
        perm = random.Random(self.recipe.seed).sample(range(k), k)
        arranged = [None] * k
        for i, p in enumerate(perm):
            arranged[p] = want[i]
        t0 = time.perf_counter()
        row = super().evaluate(model, arranged, cache,
                               dataclasses.replace(stage, batch_size=self.eval_batch, eval_items=k))
        self.eval_seconds += time.perf_counter() - t0
        return row


def stage_summary(folder: Path) -> dict:
    import csv

    out: dict = {"stage": folder.name}
    info = folder / "final" / "training.json"
    if info.is_file():
        out.update(json.loads(info.read_text()))
    else:  # stopped early: the last checkpoint's state
        ckpts = sorted((folder / "checkpoints").glob("step-*/state.json"))
        if ckpts:
            st = json.loads(ckpts[-1].read_text())
            out.update(steps=st["step"], examples=st["position"], tokens=st["tokens"],
                       wall_time_s=st["elapsed_s"], records_seen=st["records"], stopped_early=True)
    rows = list(csv.DictReader((folder / "metrics.csv").open())) if (folder / "metrics.csv").is_file() else []
    evals = [(int(r["step"]), float(r["eval_loss"])) for r in rows if r.get("eval_loss")]
    if rows:
        out["first_loss"], out["last_loss"] = float(rows[0]["loss"]), float(rows[-1]["loss"])
        steady = [float(r["tokens_per_s"]) for r in rows[1:]] or [float(rows[0]["tokens_per_s"])]
        out["median_step_tokens_per_s"] = sorted(steady)[len(steady) // 2]
    if evals:
        out["eval_loss_by_step"] = evals
    if out.get("wall_time_s"):
        out["tokens_per_s"] = round(out["tokens"] / out["wall_time_s"], 1)
        out["records_per_hour"] = round(out["records_seen"] / out["wall_time_s"] * 3600)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="gpu-real")
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--analysis-cache", action="append", default=[])
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--max-steps", type=int, default=None, help="cap every stage (a smoke test)")
    ap.add_argument("--eval-batch", type=int, default=4)
    a = ap.parse_args()

    recipe = Recipe.load(a.recipe)
    recipe.analysis_cache = list(a.analysis_cache)
    trainer = CpuComparableTrainer(recipe, a.out, data=a.data, max_steps=a.max_steps, progress=False)
    trainer.eval_batch = a.eval_batch
    trainer.eval_seconds = 0.0
    t0 = time.perf_counter()
    status = "finished"
    try:
        trainer.run()
    except TrainInterrupted:
        status = "stopped (SIGINT/SIGTERM: time limit)"
    wall = time.perf_counter() - t0
    cuda = torch.cuda.is_available()
    summary = {
        "status": status, "recipe": recipe.name, "wall_s_total": round(wall, 1),
        "eval_s_total": round(trainer.eval_seconds, 1),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "precision": trainer.precision.label,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
        "stages": [stage_summary(f) for f in sorted(Path(a.out).glob("[0-9]-*")) if f.is_dir()],
    }
    Path(a.summary).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    sys.exit(0 if status == "finished" else 130)


if __name__ == "__main__":
    main()
