"""One transcript -> one scored row (what the report and the metrics read).

A row holds the item's task fields (kind, category, sub-category, number of images, attribute, groups),
the prediction as read from the answer, ``correct`` (None when the task has no right/wrong), the task's
extra numbers (``abs_error`` for age, ``score`` for open QA, the three tool-use checks) and the grounding
verdict. Scoring is cheap and recomputed on every report, so the cache only holds what the model said.
"""

from __future__ import annotations

from .answers import Judge, age_error, age_group_of, extract_attribute, extract_choice, in_form, rubric_score
from .grounding import evidence_from_analysis, ground, labels_from_dicts
from .items import LETTERS, EvalItem


def _final_text(transcript: dict) -> str:
    return transcript.get("final") or ""


def score_row(item: EvalItem, transcript: dict, *, judge: Judge | None = None) -> dict:
    text = _final_text(transcript)
    row: dict = {
        "item": item.id, "model": transcript["model"], "setting": transcript["setting"], "kind": item.kind,
        "category": item.category, "sub_category": item.sub_category, "dataset": item.dataset,
        "num_images": item.num_images_label, "attribute": item.attribute, "groups": item.groups,
        "reference_source": item.reference_source, "answer": text, "error": transcript.get("error"),
        "cached": transcript.get("cached", False), "seconds": transcript.get("seconds"),
        "answer_form": item.answer_form, "in_form": in_form(text, item.answer_form) if item.kind != "tool" else None,
    }
    if item.kind == "mc":
        pred = extract_choice(text, item.options)
        row.update(reference=item.answer_letter, prediction=pred, parsed=pred is not None,
                   correct=pred == item.answer_letter,
                   reference_label=item.correct_option,
                   predicted_label=item.options[LETTERS.index(pred)] if pred else None)
    elif item.kind == "attribute":
        pred = extract_attribute(text, item.attribute)
        row.update(prediction=pred, parsed=pred is not None)
        if item.attribute == "age":
            err = age_error(float(pred), item.reference) if pred is not None else None
            ref = item.reference
            mid = (ref[0] + ref[1]) / 2 if isinstance(ref, list) else float(ref)
            row.update(reference=ref, abs_error=err, correct=err is not None and err <= 5.0,
                       reference_label=age_group_of(mid), predicted_label=age_group_of(pred) if pred is not None
                       else None)
        elif item.attribute == "count":
            ref = int(item.reference)
            row.update(reference=ref, abs_error=abs(pred - ref) if pred is not None else None, correct=pred == ref,
                       reference_label=str(ref), predicted_label=None if pred is None else str(pred))
        else:
            row.update(reference=item.reference, correct=pred == item.reference, reference_label=item.reference,
                       predicted_label=pred)
    elif item.kind == "open":
        s = (judge.score(item.question, text, str(item.reference), item.keywords) if judge is not None
             else rubric_score(text, str(item.reference), item.keywords))
        row.update(reference=item.reference, score=s.score, correct=s.correct, judge=s.method, judge_detail=s.detail,
                   parsed=bool(text.strip()))
    elif item.kind == "tool":
        calls = transcript.get("tool_calls", [])
        first = calls[0] if calls else None
        right = first is not None and first["name"] in item.expected_tools
        valid = bool(calls) and all(c["valid_args"] for c in calls)
        # what the tools returned in this run, plus what they measured when the benchmark was built
        tool_ev = (labels_from_dicts(transcript.get("tool_evidence", [])) + labels_from_dicts(item.evidence)
                   + evidence_from_analysis(item.analysis))
        g = ground(text, tool_ev) if text.strip() else None
        consistent = bool(calls) and g is not None and not g.is_contradicted
        row.update(reference=item.expected_tools, prediction=[c["name"] for c in calls], tool_right=right,
                   args_valid=valid, consistent=consistent, correct=right and valid and consistent,
                   parsed=bool(calls), tool_errors=[c["error"] for c in calls if c["error"]])
    evidence = labels_from_dicts(item.evidence) + evidence_from_analysis(item.analysis)
    if item.kind == "tool":
        evidence += labels_from_dicts(transcript.get("tool_evidence", []))
    if evidence and text.strip():
        g = ground(text, evidence)
        row["grounding"] = {**g.to_dict(), "is_contradicted": g.is_contradicted}
    else:
        row["grounding"] = None
    return row


def score_all(items: dict[str, EvalItem], transcripts: list[dict], *, judge: Judge | None = None) -> list[dict]:
    return [score_row(items[t["item"]], t, judge=judge) for t in transcripts]

