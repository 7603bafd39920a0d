"""Metrics over scored rows: accuracy breakdowns, macro-F1, MAE, tool use, grounding, confusion, fairness gaps."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

CLASS_ATTRIBUTES = ("expression", "gender", "age_group", "same_person")
MIN_GAP_N = 10  # a group with fewer items is shown but left out of the largest-gap figure (too noisy)
NONE_LABEL = "(none)"


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def accuracy(rows: Iterable[dict]) -> dict:
    rs = [r for r in rows if r.get("correct") is not None]
    return {"accuracy": _mean([1.0 if r["correct"] else 0.0 for r in rs]), "n": len(rs)}


def breakdown(rows: list[dict], key: Callable[[dict], str | None]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        k = key(r)
        if k is not None:
            groups[k].append(r)
    return {k: accuracy(v) for k, v in sorted(groups.items())}


def macro_f1(pairs: list[tuple[str, str | None]]) -> float | None:
    """Macro-F1 over the reference classes (an unparsed prediction counts as wrong for its class)."""
    if not pairs:
        return None
    classes = sorted({ref for ref, _ in pairs})
    f1s = []
    for c in classes:
        tp = sum(1 for ref, p in pairs if ref == c and p == c)
        fp = sum(1 for ref, p in pairs if ref != c and p == c)
        fn = sum(1 for ref, p in pairs if ref == c and p != c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return round(sum(f1s) / len(f1s), 4)


def confusion(rows: list[dict]) -> dict:
    """Reference label x predicted label counts (rows: reference, columns: prediction, "(none)" = unreadable)."""
    refs = sorted({str(r["reference_label"]) for r in rows if r.get("reference_label") is not None})
    preds = sorted({str(r["predicted_label"]) for r in rows if r.get("predicted_label") is not None} - set(refs))
    cols = refs + preds + [NONE_LABEL]
    m = [[0] * len(cols) for _ in refs]
    for r in rows:
        if r.get("reference_label") is None:
            continue
        p = NONE_LABEL if r.get("predicted_label") is None else str(r["predicted_label"])
        m[refs.index(str(r["reference_label"]))][cols.index(p)] += 1
    return {"labels": refs, "columns": cols, "matrix": m}


def attribute_metrics(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for attr in CLASS_ATTRIBUTES + ("age", "count"):
        rs = [r for r in rows if r["kind"] == "attribute" and r["attribute"] == attr]
        if not rs:
            continue
        m = {**accuracy(rs), "parsed": _mean([1.0 if r["parsed"] else 0.0 for r in rs])}
        if attr in ("age", "count"):
            errs = [r["abs_error"] for r in rs if r.get("abs_error") is not None]
            m["mae"] = _mean(errs)
            m["mae_n"] = len(errs)
        else:
            m["macro_f1"] = macro_f1([(str(r["reference"]), None if r["prediction"] is None else str(r["prediction"]))
                                      for r in rs])
        out[attr] = m
    return out


def tool_metrics(rows: list[dict]) -> dict | None:
    rs = [r for r in rows if r["kind"] == "tool"]
    if not rs:
        return None
    return {"n": len(rs), "right_tool": _mean([float(r["tool_right"]) for r in rs]),
            "valid_args": _mean([float(r["args_valid"]) for r in rs]),
            "consistent": _mean([float(r["consistent"]) for r in rs]),
            "success": _mean([float(r["correct"]) for r in rs])}


def grounding_metrics(rows: list[dict]) -> dict:
    """Share of answers contradicted by the evidence, among answers that had evidence to check against."""
    rs = [r for r in rows if r.get("grounding") is not None]
    return {"checked": len(rs), "with_claims": sum(1 for r in rs if r["grounding"]["claims"] > 0),
            "contradicted_rate": _mean([1.0 if r["grounding"]["is_contradicted"] else 0.0 for r in rs])}


def open_metrics(rows: list[dict]) -> dict | None:
    rs = [r for r in rows if r["kind"] == "open"]
    if not rs:
        return None
    methods = sorted({r["judge"] for r in rs})
    return {**accuracy(rs), "mean_score": _mean([r["score"] for r in rs]), "scored_by": methods}


def in_form_rate(rows: list[dict]) -> float | None:
    """Share of answers in the form the question asked for, among questions that asked for one."""
    return _mean([1.0 if r["in_form"] else 0.0 for r in rows if r.get("in_form") is not None])


def headline(rows: list[dict]) -> dict:
    """The handful of numbers used for fairness gaps and the summary table."""
    mc = [r for r in rows if r["kind"] == "mc"]
    age = [r["abs_error"] for r in rows if r["kind"] == "attribute" and r.get("attribute") == "age"
           and r.get("abs_error") is not None]
    return {"accuracy": accuracy(rows)["accuracy"], "mc_accuracy": accuracy(mc)["accuracy"],
            "attribute_accuracy": accuracy([r for r in rows if r["kind"] == "attribute"])["accuracy"],
            "age_mae": _mean(age), "in_form": in_form_rate(rows),
            "contradicted_rate": grounding_metrics(rows)["contradicted_rate"]}


def fairness(rows: list[dict], min_n: int = 1) -> dict:
    """Every headline metric per demographic group (per axis: gender, age group, the dataset's race label,
    their intersection, ...) and the largest gap between the groups of an axis (max - min over groups with at
    least ``min_n`` items)."""
    axes = sorted({axis for r in rows for axis in (r.get("groups") or {})})
    out = {}
    for axis in axes:
        per_group: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            g = (r.get("groups") or {}).get(axis)
            if g is not None:
                per_group[str(g)].append(r)
        groups = {g: {**headline(rs), "n": len(rs)} for g, rs in sorted(per_group.items())}
        gaps = {}
        for metric in ("accuracy", "mc_accuracy", "attribute_accuracy", "age_mae", "in_form", "contradicted_rate"):
            vals = {g: m[metric] for g, m in groups.items() if m[metric] is not None and m["n"] >= min_n}
            if len(vals) >= 2:
                hi, lo = max(vals, key=vals.get), min(vals, key=vals.get)
                gaps[metric] = {"gap": round(vals[hi] - vals[lo], 4), "highest": hi, "lowest": lo}
        out[axis] = {"groups": groups, "gaps": gaps}
    return out


def summarize(rows: list[dict]) -> dict:
    """All metrics of one model in one setting."""
    mc = [r for r in rows if r["kind"] == "mc"]
    return {
        "n": len(rows), "errors": sum(1 for r in rows if r.get("error")), **headline(rows),
        "mc": {"overall": accuracy(mc), "parsed": _mean([1.0 if r["parsed"] else 0.0 for r in mc]),
               "per_category": breakdown(mc, lambda r: r["category"]),
               "per_sub_category": breakdown(mc, lambda r: f"{r['category']}/{r['sub_category']}"),
               "per_num_images": breakdown(mc, lambda r: r["num_images"])} if mc else None,
        "attributes": attribute_metrics(rows),
        "confusion": {attr: confusion([r for r in rows if r["kind"] == "attribute" and r["attribute"] == attr])
                      for attr in CLASS_ATTRIBUTES
                      if any(r["kind"] == "attribute" and r["attribute"] == attr for r in rows)},
        "open": open_metrics(rows), "tools": tool_metrics(rows), "grounding": grounding_metrics(rows),
        "per_category": breakdown(rows, lambda r: r["category"]),
        "fairness": fairness(rows, min_n=MIN_GAP_N),
        "in_form": in_form_rate(rows),
        "in_form_n": sum(1 for r in rows if r.get("in_form") is not None),
    }
