"""Grounding: does an answer state something the tools' evidence contradicts?

The claims are read by data_gen's fact checker (``facellm.data_gen.factcheck``: face counts, smiling, eyes,
glasses, expression words, gender words, ages, head direction, ...). data_gen rejects a claim that no label
*supports*; here a claim only counts against the model when the evidence *has* labels for that attribute and
none of them supports it (a contradiction). A claim about an attribute the evidence never measured is
"unsupported" and reported separately: the tools' silence is not evidence against the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from facellm.data_gen.factcheck import BOOL_ATTRS, check_claim, extract_claims
from facellm.data_gen.facts import ALIASES
from facellm.data_gen.schema import Label

# the label names that can speak for or against each kind of claim
_EVIDENCE_NAMES: dict[str, tuple[str, ...]] = {
    "num_faces": ("num_faces",),
    "expression": ("expression", "top_expression", "smile"),
    "gender": ALIASES["gender"],
    "race": ("race",),
    "age": ALIASES["age"],
    "head_turn": ("head_pose",),
    **{attr: names for attr, (_, names) in BOOL_ATTRS.items()},
}


@dataclass
class Grounding:
    claims: int = 0
    contradicted: list[str] = field(default_factory=list)
    unsupported: int = 0

    @property
    def is_contradicted(self) -> bool:
        return bool(self.contradicted)

    def to_dict(self) -> dict:
        return {"claims": self.claims, "contradicted": self.contradicted, "unsupported": self.unsupported}


def labels_from_dicts(evidence: list[dict]) -> list[Label]:
    return [Label.model_validate(d) for d in evidence]


def ground(answer: str | None, evidence: list[Label]) -> Grounding:
    """The answer's claims checked against the evidence labels."""
    out = Grounding()
    if not answer:
        return out
    names = {lb.name for lb in evidence}
    for claim in extract_claims(answer):
        out.claims += 1
        relevant = _EVIDENCE_NAMES.get(claim.attribute, (claim.attribute,))
        if not names.intersection(relevant):
            out.unsupported += 1
            continue
        problem = check_claim(claim, evidence)
        if problem is not None:
            out.contradicted.append(problem)
    return out


def evidence_from_analysis(analysis_json: dict | None) -> list[Label]:
    """Model-estimate labels for everything the tools measured in a FaceAnalysis (data_gen's own mapping)."""
    if not analysis_json:
        return []
    import json

    from facellm.data_gen.evidence import model_labels
    from facellm.tools.schema import FaceAnalysis

    return model_labels(FaceAnalysis.from_json(json.dumps(analysis_json)))
