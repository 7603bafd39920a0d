"""One evaluation run: every model and baseline on every item in every setting, then the report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .answers import Judge
from .items import Benchmark
from .metrics import summarize
from .report import write_report
from .responders import MajorityBaseline, RandomBaseline, Responder
from .runner import ResponseCache, run_responder
from .scoring import score_all

BASELINES = ("random", "majority", "no_image", "tools", "untrained", "agent")
DEFAULT_BASELINES = ("random", "majority", "no_image", "tools")  # untrained and agent: asked for by name


@dataclass
class RunConfig:
    settings: list[str] = field(default_factory=lambda: ["zero_shot"])
    concurrency: int = 4
    progress: bool = True
    cache: str | Path | None = None  # default: <out>/cache.sqlite


def baseline_responders(names: list[str], benchmark: Benchmark) -> list[Responder]:
    """The answer-without-looking and tools-only baselines ("no_image" needs the model: see the CLI)."""
    out: list[Responder] = []
    for n in names:
        if n == "random":
            out.append(RandomBaseline())
        elif n == "majority":
            out.append(MajorityBaseline(benchmark.items))
        elif n == "tools":
            from .tools_agent import ToolsOnlyAgent

            out.append(ToolsOnlyAgent())
        elif n not in ("no_image", "untrained", "agent"):  # these need the model (the CLI adds them)
            raise ValueError(f"unknown baseline {n!r}; choose from {', '.join(BASELINES)}")
    return out


def speed(transcripts: list[dict], wall_s: float) -> dict:
    """Throughput of the items answered in this run (cached answers cost nothing and are not counted)."""
    new = [t for t in transcripts if not t.get("cached")]
    return {"new_items": len(new), "wall_s": round(wall_s, 2),
            "items_per_s": round(len(new) / wall_s, 3) if new and wall_s > 0 else None,
            "mean_item_s": round(sum(t.get("seconds") or 0.0 for t in new) / len(new), 3) if new else None}


def evaluate(benchmark: Benchmark, responders: list[Responder], out: str | Path, *, config: RunConfig | None = None,
             judge: Judge | None = None, main_model: str | None = None, notes: list[str] | None = None) -> dict:
    """Run ``responders`` over ``benchmark`` and write the report into ``out``; returns the paths and summary."""
    cfg = config or RunConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [r.name for r in responders]
    if len(set(names)) != len(names):
        raise ValueError(f"two models share a name: {names}")
    cache = ResponseCache(cfg.cache or out / "cache.sqlite")
    if judge is not None:
        judge.cache = cache
    items = {it.id: it for it in benchmark.items}
    rows: list[dict] = []
    summary: dict[str, dict] = {}
    try:
        for responder in responders:
            for setting in cfg.settings:
                t0 = time.perf_counter()
                transcripts = run_responder(responder, benchmark.items, setting, cache=cache,
                                            concurrency=cfg.concurrency, progress=cfg.progress)
                wall = time.perf_counter() - t0
                scored = score_all(items, transcripts, judge=judge)
                rows.extend(scored)
                summary.setdefault(responder.name, {})[setting] = {**summarize(scored),
                                                                   "speed": speed(transcripts, wall)}
    finally:
        if judge is not None:
            judge.cache = None
        cache.close()
    all_notes = list(notes or []) + list(benchmark.notes)
    all_notes.append(f"{len(benchmark.items)} items from {benchmark.source or benchmark.name}; "
                     f"references: {', '.join(sorted({it.reference_source for it in benchmark.items}))}.")
    if any(r.name == "majority" for r in responders):
        all_notes.append("majority: the most frequent reference answer of each task among the *other* items of "
                         "this benchmark (leave-one-out); near-duplicate items (augmented copies of one photo) make "
                         "it strong, so read it as an upper bound for answering without looking.")
    if any(r.name == "tools-only" for r in responders):
        all_notes.append("tools-only: facellm.tools' estimates turned into answers by fixed rules, no LM.")
    if any(hasattr(r, "run_item") for r in responders):
        all_notes.append("agent: `facellm ask --agent` on each item's question (a fresh conversation per item); its "
                         "tool calls are scored like the model's.")
    groups: dict[str, set[str]] = {}
    for it in benchmark.items:
        for axis, g in it.groups.items():
            groups.setdefault(axis, set()).add(g)
    thin = sorted(axis for axis, gs in groups.items() if len(gs) < 2)
    if thin:
        all_notes.append(f"Only one annotated group for {', '.join(thin)}: no fairness gap can be measured there "
                         "(use records from a dataset with demographic labels, e.g. data_gen's fairface or utkface "
                         "adapters).")
    all_notes.append("Age, gender and expression are perceived (annotated by people, or estimated by models), "
                     "not facts about the people shown. Groups for fairness come from annotations only.")
    report = write_report(out, benchmark=benchmark.name, settings=cfg.settings, summary=summary, rows=rows,
                          main_model=main_model, notes=all_notes,
                          config={"settings": cfg.settings, "models": names, "judge": judge.name if judge else
                                  "rubric", "concurrency": cfg.concurrency,
                                  "benchmark_counts": benchmark.counts})
    return {**report, "summary_data": summary}
