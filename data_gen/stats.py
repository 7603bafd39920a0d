"""``facellm data stats DIR``: what a generated folder holds.

Counts per style, category, split, source and group; label provenance (human / transform / model, and which
model); distinct-n of the answers (variety of the template engine or teacher); an answer-length histogram
per style written as a PNG.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .loader import load_records
from .templates import distinct_n


@dataclass
class DataStats:
    records: int = 0
    images: int = 0
    by_style: Counter = field(default_factory=Counter)
    by_split: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)  # "style/category"
    by_split_style: Counter = field(default_factory=Counter)  # "split/style"
    groups_per_split: dict = field(default_factory=dict)
    label_kinds: Counter = field(default_factory=Counter)  # per image: human / transform / model
    label_sources: Counter = field(default_factory=Counter)  # per image: "kind: source"
    human_label_names: Counter = field(default_factory=Counter)
    model_label_names: Counter = field(default_factory=Counter)
    answer_words: dict = field(default_factory=lambda: defaultdict(list))  # style -> lengths
    distinct: dict = field(default_factory=dict)  # style -> {"distinct-1": .., "distinct-2": ..}
    tool_calls: Counter = field(default_factory=Counter)
    leaks: list = field(default_factory=list)  # groups found in more than one split (should stay empty)
    skipped_inputs: Counter = field(default_factory=Counter)  # dataset files the adapters left out, per reason

    def to_dict(self) -> dict:
        return {"records": self.records, "images": self.images, "by_style": dict(self.by_style),
                "by_split": dict(self.by_split), "by_source": dict(self.by_source),
                "by_category": dict(sorted(self.by_category.items())),
                "by_split_style": dict(sorted(self.by_split_style.items())),
                "groups_per_split": self.groups_per_split, "label_kinds": dict(self.label_kinds),
                "label_sources": dict(self.label_sources.most_common()),
                "human_label_names": dict(self.human_label_names.most_common()),
                "model_label_names": dict(self.model_label_names.most_common()),
                "distinct_n": self.distinct, "tool_calls": dict(self.tool_calls.most_common()),
                "split_leaks": self.leaks, "skipped_inputs": dict(self.skipped_inputs)}


def compute_stats(out: str | Path) -> DataStats:
    from facellm.toolcall import parse_tool_calls

    st = DataStats()
    seen_images: set[str] = set()
    group_splits: dict[str, set[str]] = defaultdict(set)
    answers: dict[str, list[str]] = defaultdict(list)
    for r in load_records(out):
        st.records += 1
        st.by_style[r.style] += 1
        st.by_split[r.split] += 1
        st.by_source[r.source] += 1
        st.by_category[f"{r.style}/{r.category}"] += 1
        st.by_split_style[f"{r.split}/{r.style}"] += 1
        group_splits[r.group].add(r.split)
        if r.image.sha256 not in seen_images:  # labels are per image: count them once
            seen_images.add(r.image.sha256)
            for lb in r.labels:
                st.label_kinds[lb.kind] += 1
                st.label_sources[f"{lb.kind}: {lb.source}"] += 1
                if lb.kind == "human":
                    st.human_label_names[lb.name] += 1
                elif lb.kind == "model":
                    st.model_label_names[lb.name] += 1
        for t in r.conversations:
            if t.from_ == "gpt":
                for c in parse_tool_calls(t.value).tool_calls:
                    st.tool_calls[c.name] += 1
        for a in r.answers():
            answers[r.style].append(a)
            st.answer_words[r.style].append(len(a.split()))
    st.images = len(seen_images)
    skipped = Path(out) / "skipped_inputs.jsonl"  # written by the pipeline (data_gen/pipeline.py SKIPPED_FILE)
    if skipped.is_file():
        for line in skipped.read_text(encoding="utf-8").splitlines():
            if line.strip():
                s = json.loads(line)
                st.skipped_inputs[f"{s['source']}: {s['reason']}"] += 1
    for split in sorted(st.by_split):
        st.groups_per_split[split] = sum(1 for s in group_splits.values() if split in s)
    st.leaks = sorted(g for g, s in group_splits.items() if len(s) > 1)
    st.distinct = {s: {"distinct-1": round(distinct_n(a, 1), 3), "distinct-2": round(distinct_n(a, 2), 3)}
                   for s, a in sorted(answers.items())}
    return st


def plot_lengths(st: DataStats, path: str | Path) -> Path:
    """Answer length (words) per style as overlaid histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    styles = sorted(st.answer_words)
    top = max((max(v) for v in st.answer_words.values() if v), default=10)
    bins = list(range(0, top + 5, max(1, (top + 5) // 40)))
    for s in styles:
        ax.hist(st.answer_words[s], bins=bins, alpha=0.55, label=f"{s} (n={len(st.answer_words[s])})")
    ax.set_xlabel("answer length (words)")
    ax.set_ylabel("answers")
    ax.set_title(f"Answer lengths: {st.records} records, {st.images} images")
    if styles:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def format_stats(st: DataStats) -> str:
    lines = [f"{st.records} records on {st.images} images"]

    def block(title: str, counter: Counter | dict, limit: int | None = None) -> None:
        items = counter.most_common(limit) if isinstance(counter, Counter) else list(counter.items())
        if not items:
            return
        lines.append(f"\n{title}:")
        width = max(len(str(k)) for k, _ in items)
        for k, v in items:
            lines.append(f"  {str(k):<{width}}  {v}")

    block("per style", st.by_style)
    block("per split", st.by_split)
    block("per split and style", dict(sorted(st.by_split_style.items())))
    block("split groups (photos / identities) per split", st.groups_per_split)
    block("per source", st.by_source)
    block("per category", dict(sorted(st.by_category.items())))
    block("label provenance (per image)", st.label_kinds)
    block("label sources (per image)", st.label_sources)
    block("human-annotated labels", st.human_label_names)
    block("model-estimated labels", st.model_label_names)
    block("tool calls in agent traces", st.tool_calls)
    if st.distinct:
        lines.append("\nanswer variety (distinct-1 / distinct-2):")
        for s, d in st.distinct.items():
            lines.append(f"  {s:<12}  {d['distinct-1']:.3f} / {d['distinct-2']:.3f}")
    block("dataset files skipped (skipped_inputs.jsonl)", st.skipped_inputs)
    lines.append("\nsplit leaks (groups in more than one split): " + (", ".join(st.leaks[:10]) or "none"))
    return "\n".join(lines)
