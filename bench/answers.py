"""Read a model's answers on held-out real faces, next to the human label and what its attribute head read.

    .venv/bin/python bench/answers.py MODEL_DIR [--data data/facedata-part0 ...] [-n 20] [--seed 0]

Takes N faces from the ``test`` split of `facellm data generate` records of UTKFace (age, gender) and FER2013
(expression), asks the model the short-form questions a user asks, and prints one row per face: the human
label, the attribute head's reading (the attribute tokens the LM is given, when the model has them) and the
model's answers verbatim. It is for looking, not scoring: `facellm eval --benchmark real` scores. Only the
held-out split (never trained on) is read; the face analyses come from data_gen's cache where it has them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = {"age": "How old does this person look? Answer with a number.",
             "gender": "Does this person look like a man or a woman? One word.",
             "expression": "What is this person's facial expression? One word."}


def held_out_faces(folders: list[Path], n: int, seed: int) -> list[dict]:
    """One record per test-split UTKFace / FER2013 image with a human label, a seeded sample of n."""
    seen: dict[str, dict] = {}
    for folder in folders:
        for shard in sorted((folder / "shards").glob("*.jsonl")):
            for line in shard.open(encoding="utf-8"):
                if '"split":"test"' not in line or '"kind":"human"' not in line:
                    continue
                rec = json.loads(line)
                if rec.get("source") not in ("utkface", "fer2013") or len(rec["faces"]["faces"]) != 1:
                    continue
                if len((rec.get("meta") or {}).get("images") or []) > 1:
                    continue
                labels = {lb["name"]: lb["value"] for lb in rec.get("labels") or [] if lb.get("kind") == "human"}
                if labels:
                    seen.setdefault(rec["image"]["sha256"], {"path": rec["image"]["path"], "sha256": rec["image"]["sha256"],
                                                             "source": rec["source"], "labels": labels})
    items = sorted(seen.values(), key=lambda r: r["path"])
    random.Random(seed).shuffle(items)
    # half UTKFace (age, gender), half FER2013 (expression)
    utk = [r for r in items if r["source"] == "utkface"][: (n + 1) // 2]
    fer = [r for r in items if r["source"] == "fer2013"][: n - len(utk)]
    return utk + fer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", nargs="+", default=["data/facedata-part0", "data/facedata-part1"])
    ap.add_argument("--analysis-cache", default="data/analysis-cache",
                    help="data_gen's --cache folder (analyses by image sha256); the face tools run where it has none")
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from facellm.attribute_tokens import EXPRESSIONS
    from facellm.modeling import FaceLLMForConditionalGeneration
    from facellm.tools.schema import FaceAnalysis

    model = FaceLLMForConditionalGeneration.from_pretrained(args.model).eval()
    reading: list[dict] = []
    if model.attribute_tokens is not None:  # record what the head hands the LM on each call
        estimates = model.attribute_tokens.estimates

        def recorded(fmap, boxes):
            out = estimates(fmap, boxes)
            reading.append({k: v[0, 0].tolist() for k, v in out.items()})
            return out
        model.attribute_tokens.estimates = recorded

    print("| source | human label | head reading | age answer | gender answer | expression answer |")
    print("|---|---|---|---|---|---|")
    for item in held_out_faces([Path(d) for d in args.data], args.n, args.seed):
        cached = Path(args.analysis_cache) / f"{item['sha256']}.json"
        analysis = FaceAnalysis.from_json(cached.read_text()) if cached.is_file() else None
        answers, head = {}, ""
        for key, q in QUESTIONS.items():
            reading.clear()
            with torch.no_grad():
                answers[key] = model.chat((item["path"], q), analyses=[analysis], max_new_tokens=16).replace("\n", " ")
            if reading and not head:
                r = reading[-1]
                g = "woman" if r["gender"][1] > 0.5 else "man"
                e = max(range(7), key=lambda i: r["expression"][i])
                head = f"{r['age']:.0f}, {g} {max(r['gender']):.2f}, {EXPRESSIONS[e]} {r['expression'][e]:.2f}"
        label = ", ".join(f"{k} {v}" for k, v in item["labels"].items() if k in ("age", "gender", "expression"))
        print(f"| {item['source']} | {label} | {head or '-'} | {answers['age']} | {answers['gender']} | "
              f"{answers['expression']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
