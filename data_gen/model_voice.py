"""Training targets in the model's own voice.

Records keep each label's provenance, and their answers say where a value came from ("(annotated)", "according
to the human label", "as the dataset's annotators perceived"). That is right for the record, wrong for a training
target: a trained model would repeat "annotated" about a new photo that no annotator ever saw — claiming a
source it does not have. So when a record becomes a training target, provenance phrases are dropped or turned
into the model's own hedge ("a perceived-age estimate"), and answers that are *about* the annotation itself (a
human label compared with a tool's value) are not trainable at all: only the record knows that label.

``model_voice(answer)`` returns the rewritten answer, or None when the answer cannot be said by the model.
"""

from __future__ import annotations

import re

# Answers whose subject is the dataset's annotation: the model cannot know it about a new photo.
_ABOUT_ANNOTATION = re.compile(
    r"human annotation says|annotators perceived a|annotated perceived age is|the (?:human )?label says|"
    r"annotation and the|label and the .{0,30}model|the annotators? (?:say|said|labelled)", re.I)

# (pattern, replacement), applied in order. Each removes a claim of provenance, never a value.
_REWRITES: list[tuple[re.Pattern[str], str]] = [(re.compile(p, re.I), r) for p, r in [
    (r"Rationale: from the dataset's human label;", "Rationale: judged from the face's appearance;"),
    (r",? according to the human label of perceived age", " (a perceived-age estimate)"),
    (r"; this is the annotated perceived age", "; this is a perceived-age estimate"),
    (r",? according to the dataset's identity labels", ""),
    (r",? as the dataset's annotators perceived", ""),
    (r",? according to the human label", ""),
    (r" \((?:this class )?\(?human annotation\)\)?", ""),
    (r" \(annotated as this class\)", ""),
    (r" \(annotated from appearance\)", " (judged from appearance)"),
    (r",? annotated\)", ")"),
    (r" \(annotated\)", ""),
    (r"\bannotated as ", ""),
]]
_LEFTOVER = re.compile(r"annotat|human label|dataset'?s? label", re.I)


def model_voice(answer: str) -> str | None:
    """``answer`` without provenance claims the model could not make about a new photo; None if it is about one."""
    if _ABOUT_ANNOTATION.search(answer):
        return None
    out = answer
    for pat, rep in _REWRITES:
        out = pat.sub(rep, out)
    if _LEFTOVER.search(out):  # a wording this table does not know: safer not to train on it
        return None
    return out
