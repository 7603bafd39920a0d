"""Does tuning the vision tower on faces help? The same attribute head on the frozen ImageNet tower vs the tower
the `real` recipe's face-tower stage tuned, on the same held-out (validation) faces.

    .venv/bin/python bench/tower.py runs/real [--steps 300] [--out bench/results/tower.md]

Rows: the frozen ImageNet EfficientNet-Lite0 (stage5) with the attribute head trained ``--steps`` steps on the
run's train faces (a probe: what the LM could at best read off the frozen features), and the run's tuned tower
with the head its stage trained. Both are scored on every validation face of the run's data (human labels:
perceived age MAE on UTKFace, gender accuracy, FER2013 7-class accuracy), with the time each took.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facellm.train.tower import (AttributeHead, attribute_loss, evaluate_attributes, face_batch,  # noqa: E402
                                 face_targets)


def probe(tower, train, steps: int, batch: int, seed: int = 0) -> tuple[AttributeHead, float]:
    head = AttributeHead(tower.hidden_size)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = random.Random(seed)
    tower.eval()
    t0 = time.perf_counter()
    for step in range(steps):
        part = rng.sample(train, batch)
        pixels, masks = face_batch(tower, part)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            fmap = tower(pixels).feature_map
        head.train()
        with torch.autocast("cpu", torch.bfloat16):
            out = head(fmap.float(), masks)
        loss = attribute_loss(out, part)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0:
            print(f"  probe step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    return head, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a run folder of recipe real (its face-tower stage finished)")
    ap.add_argument("--steps", type=int, default=300, help="probe steps on the frozen tower (batch 32)")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    run = Path(args.run)
    stage = next(p for p in sorted(run.iterdir()) if p.name.endswith("face-tower"))
    saved = json.loads((run / "recipe.json").read_text())
    snapshot = json.loads((run / "data.json").read_text())
    targets = face_targets(saved["data"], snapshot)
    train = [t for t in targets if t.split == "train"]
    held = [t for t in targets if t.split == "validation"]
    print(f"{len(train)} train faces, {len(held)} held-out faces", flush=True)

    from facellm.modeling import FaceLLMForConditionalGeneration
    from facellm.vision import build_vision_tower

    auto = lambda: torch.autocast("cpu", torch.bfloat16)  # noqa: E731
    rows = []
    frozen = build_vision_tower("efficientnet-lite0", feature="stage5")
    head, train_s = probe(frozen, train, args.steps, 32)
    t0 = time.perf_counter()
    res = evaluate_attributes(frozen, head, held, auto)
    rows.append(("EfficientNet-Lite0 ImageNet, frozen (head probe)", f"head {args.steps} steps", train_s,
                 time.perf_counter() - t0, res))
    tuned_model = FaceLLMForConditionalGeneration.from_pretrained(stage / "final")
    info = json.loads((stage / "final" / "training.json").read_text())
    head = AttributeHead(tuned_model.vision_tower.hidden_size)
    head.load_state_dict(load_file(str(stage / "final" / "attribute_head.safetensors")))
    t0 = time.perf_counter()
    res = evaluate_attributes(tuned_model.vision_tower, head, held, auto)
    rows.append(("EfficientNet-Lite0 tuned on faces (face-tower stage)", f"tower + head {info['steps']} steps",
                 info["wall_time_s"], time.perf_counter() - t0, res))

    lines = [f"Held-out faces: {len(held)} (validation split of the run's records; human labels). "
             f"Train faces: {len(train)}. CPU, bf16 autocast.", "",
             "| tower | trained | train time | eval time | age MAE (y) | gender acc % | expression acc % |",
             "|---|---|---|---|---|---|---|"]
    for name, what, tr_s, ev_s, r in rows:
        lines.append(f"| {name} | {what} | {tr_s / 60:.1f} min | {ev_s:.0f} s | {r.get('eval_age_mae', '–')} | "
                     f"{100 * r.get('eval_gender_acc', float('nan')):.1f} | "
                     f"{100 * r.get('eval_expression_acc', float('nan')):.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text("# Frozen vs face-tuned vision tower (bench/tower.py)\n\n" + table + "\n")


if __name__ == "__main__":
    main()
