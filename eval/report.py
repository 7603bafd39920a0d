"""The report: ``results.json`` (every per-item result and every metric), ``summary.md`` (tables) and PNG plots
(per-category accuracy bars, confusion matrices, per-group fairness bars)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .metrics import CLASS_ATTRIBUTES


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def largest_gap(s: dict, metric: str = "accuracy") -> tuple[float, str] | None:
    """The largest gap of one metric between annotated groups over every axis, with where it is."""
    best = None
    for axis, f in s.get("fairness", {}).items():
        g = f["gaps"].get(metric)
        if g is not None and (best is None or g["gap"] > best[0]):
            best = (g["gap"], f"{axis}: {g['highest']} > {g['lowest']}")
    return best


# optional columns: shown when some model has the task (label, reader of one model's summary, format)
_ATTR_COLUMNS = (
    ("age MAE (y)", lambda s: s["attributes"].get("age", {}).get("mae"), "num"),
    ("age-group acc %", lambda s: s["attributes"].get("age_group", {}).get("accuracy"), "pct"),
    ("gender acc %", lambda s: s["attributes"].get("gender", {}).get("accuracy"), "pct"),
    ("expression acc %", lambda s: s["attributes"].get("expression", {}).get("accuracy"), "pct"),
    ("expression F1", lambda s: s["attributes"].get("expression", {}).get("macro_f1"), "f1"),
    ("verification acc %", lambda s: s["attributes"].get("same_person", {}).get("accuracy"), "pct"),
    ("counting acc %", lambda s: s["attributes"].get("count", {}).get("accuracy"), "pct"),
    ("MC acc %", lambda s: s["mc_accuracy"], "pct"),
    ("open score", lambda s: (s["open"] or {}).get("mean_score"), "f1"),
    ("tool success %", lambda s: (s["tools"] or {}).get("success"), "pct"),
)


def summary_table(summary: dict, setting: str) -> str:
    """One row per model: the headline numbers of one setting (the README table). Task columns appear when
    some model was scored on the task; "in form %" is the share of answers given in the asked form (a number,
    one word, yes/no, a letter); the largest accuracy gap is over every annotated group axis."""
    rows = [(m, by[setting]) for m, by in summary.items() if by.get(setting) is not None]
    cols = [c for c in _ATTR_COLUMNS if any(c[1](s) is not None for _, s in rows)]
    head = ("| model | overall acc % | in form % | " + "".join(f"{c[0]} | " for c in cols)
            + "contradicted % | largest group gap (acc pts) | items/s | n |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = {"pct": _pct, "num": _num, "f1": lambda x: _num(x, 2)}
    for model, s in rows:
        gap = largest_gap(s)
        gap_s = "–" if gap is None else f"{100 * gap[0]:.1f} ({gap[1]})"
        ips = (s.get("speed") or {}).get("items_per_s")
        lines.append(f"| {model} | {_pct(s['accuracy'])} | {_pct(s.get('in_form'))} | "
                     + "".join(f"{fmt[c[2]](c[1](s))} | " for c in cols)
                     + f"{_pct(s['contradicted_rate'])} | {gap_s} | {'cached' if ips is None else f'{ips:.2f}'} "
                     f"| {s['n']} |")
    return "\n".join(lines)


def _category_table(summary: dict, setting: str) -> str:
    cats = sorted({c for by in summary.values() for c in (by.get(setting) or {}).get("per_category", {})})
    if not cats:
        return ""
    models = [m for m in summary if setting in summary[m]]
    lines = ["| category | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for c in cats:
        cells = []
        for m in models:
            a = summary[m][setting]["per_category"].get(c)
            cells.append("–" if a is None else f"{_pct(a['accuracy'])} ({a['n']})")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fairness_table(summary: dict, setting: str) -> str:
    lines = ["| model | axis | groups (accuracy %, n) | largest accuracy gap |", "|---|---|---|---|"]
    for m, by in summary.items():
        s = by.get(setting)
        if s is None:
            continue
        for axis, f in s["fairness"].items():
            groups = ", ".join(f"{g}: {_pct(v['accuracy'])} ({v['n']})" for g, v in f["groups"].items())
            gap = f["gaps"].get("accuracy")
            gap_s = "– (one group only)" if len(f["groups"]) < 2 else "–" if gap is None else f"{100 * gap['gap']:.1f} pts ({gap['highest']} > {gap['lowest']})"
            lines.append(f"| {m} | {axis} | {groups} | {gap_s} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown(benchmark: str, summary: dict, settings: list[str], notes: list[str]) -> str:
    out = [f"# FaceLLM evaluation: {benchmark}", ""]
    for setting in settings:
        out += [f"## Setting: {setting}", "", summary_table(summary, setting), ""]
        if cat := _category_table(summary, setting):
            out += ["### Accuracy per category (%, n)", "", cat, ""]
        if fair := _fairness_table(summary, setting):
            out += ["### Fairness: accuracy per annotated group", "", fair, ""]
    out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


# ------------------------------------------------------------------ plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_categories(summary: dict, setting: str, path: Path) -> Path | None:
    plt = _plt()
    models = [m for m in summary if setting in summary[m]]
    cats = sorted({c for m in models for c in summary[m][setting]["per_category"]})
    if not cats or not models:
        return None
    import numpy as np

    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(cats) + 2), 4.8))
    x = np.arange(len(cats))
    for k, m in enumerate(models):
        vals = [100 * (summary[m][setting]["per_category"].get(c, {}).get("accuracy") or 0) for c in cats]
        bars = ax.bar(x + (k - (len(models) - 1) / 2) * width, vals, width, label=m)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax.set_xticks(x, [c.replace("_", " ") for c in cats], rotation=20, ha="right")
    ax.set_ylim(0, 109)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy per category ({setting})")
    ax.legend(fontsize=8, ncols=min(len(models), 5), loc="upper center", bbox_to_anchor=(0.5, -0.28))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusions(summary: dict, setting: str, model: str, path: Path) -> Path | None:
    s = summary.get(model, {}).get(setting)
    if not s or not s["confusion"]:
        return None
    plt = _plt()
    import numpy as np

    attrs = list(s["confusion"])
    fig, axes = plt.subplots(1, len(attrs), figsize=(4.6 * len(attrs), 4.4), squeeze=False)
    for ax, attr in zip(axes[0], attrs):
        c = s["confusion"][attr]
        m = np.array(c["matrix"], dtype=float)
        rows = m.sum(axis=1, keepdims=True)
        share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                            color="white" if share[i, j] > 0.6 else "black", fontsize=9)
        ax.set_xticks(range(len(c["columns"])), c["columns"], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(c["labels"])), c["labels"], fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(attr.replace("_", " "))
    fig.suptitle(f"Confusion matrices: {model} ({setting}); colour = share of the reference row")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fairness(summary: dict, setting: str, path: Path) -> Path | None:
    models = [m for m in summary if setting in summary[m]]
    # intersections (race x gender x age group) have dozens of groups: they are in the table, not the plot
    axes_names = sorted({a for m in models for a in summary[m][setting]["fairness"] if "×" not in a})
    if not axes_names:
        return None
    plt = _plt()
    import numpy as np

    fig, axs = plt.subplots(1, len(axes_names), figsize=(5.2 * len(axes_names), 4.6), squeeze=False)
    for ax, axis in zip(axs[0], axes_names):
        groups = sorted({g for m in models for g in summary[m][setting]["fairness"].get(axis, {}).get("groups", {})})
        x = np.arange(len(groups))
        width = 0.8 / len(models)
        for k, m in enumerate(models):
            f = summary[m][setting]["fairness"].get(axis, {"groups": {}, "gaps": {}})
            vals = [100 * (f["groups"].get(g, {}).get("accuracy") or 0) for g in groups]
            gap = f["gaps"].get("accuracy", {}).get("gap")
            label = m if gap is None else f"{m} (gap {100 * gap:.0f} pts)"
            ax.bar(x + (k - (len(models) - 1) / 2) * width, vals, width, label=label)
        ns = [max(summary[m][setting]["fairness"].get(axis, {}).get("groups", {}).get(g, {}).get("n", 0)
                  for m in models) for g in groups]
        ax.set_xticks(x, [f"{g}\n(n={n})" for g, n in zip(groups, ns)], fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        one = " — one group only, no gap measurable" if len(groups) < 2 else ""
        ax.set_title(f"by {axis.replace('_', ' ')} (annotated){one}", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Accuracy per demographic group ({setting})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: str | Path, *, benchmark: str, settings: list[str], summary: dict, rows: list[dict],
                 main_model: str | None, notes: list[str], config: dict) -> dict:
    """Write results.json, summary.md and the plots; returns their paths."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    for setting in settings:
        for p in (plot_categories(summary, setting, out / "plots" / f"categories_{setting}.png"),
                  plot_fairness(summary, setting, out / "plots" / f"fairness_{setting}.png")):
            if p is not None:
                plots.append(str(p.relative_to(out)))
        for model in summary:
            if model == main_model or main_model is None:
                safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
                p = plot_confusions(summary, setting, model, out / "plots" / f"confusion_{safe}_{setting}.png")
                if p is not None:
                    plots.append(str(p.relative_to(out)))
    md = markdown(benchmark, summary, settings, notes)
    md += "\n## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in plots) + "\n"
    results = {"benchmark": benchmark, "settings": settings, "config": config, "summary": summary,
               "notes": notes, "plots": plots, "items": rows}
    _atomic_write_text(out / "results.json", json.dumps(results, ensure_ascii=False, indent=1, default=str))
    _atomic_write_text(out / "summary.md", md)
    return {"results": str(out / "results.json"), "summary": str(out / "summary.md"), "plots": plots}
