"""Grounding check: the answer's claims about measurable attributes against what the tools measured.

Claims are read with data_gen's fact checker (``facellm.data_gen.factcheck``: face counts, smile, eyes
closed, mouth open, glasses, expression, age, head turn, with negation handling) and compared with the
tool results of the images the turn used, as labels (``facellm.data_gen.evidence.model_labels``). A claim
is *contradicted* when the tools measured that attribute and it disagrees, and *unsupported* when no tool
measured it. A sentence that names one face ("face 3 ...") is checked against that face only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from facellm.data_gen.evidence import model_labels
from facellm.data_gen.factcheck import BOOL_ATTRS, Claim, check_claim, extract_claims
from facellm.data_gen.schema import Label, estimate
from facellm.tools.schema import FaceAnalysis

# the attributes the agent's tools measure and the check covers (gender words and race are left out:
# pronouns are not measurements, and the tools estimate no race)
CHECKED = {"num_faces", "smile", "eyes_closed", "mouth_open", "eyeglasses", "brow_raise", "expression", "age",
           "head_turn"}
_LABEL_NAMES = {"num_faces": ("num_faces",), "expression": ("expression",), "head_turn": ("head_pose",),
                "age": ("perceived_age", "perceived_age_range"),
                **{k: v[1] for k, v in BOOL_ATTRS.items()}}
_FRONTAL = re.compile(r"\b(frontal|facing the camera|faces the camera|looking straight at the camera)\b")
_TURN = re.compile(r"\bturned (?:far )?(?:to|towards) (?:their|the subject's|his|her) (left|right)\b")


@dataclass
class GroundingIssue:
    attribute: str
    claimed: object
    sentence: str
    verdict: str  # "contradicted" (the tools measured otherwise) or "unsupported" (no tool measured it)
    detail: str


@dataclass
class GroundingReport:
    checked: int = 0  # claims compared
    issues: list[GroundingIssue] = field(default_factory=list)

    @property
    def contradictions(self) -> list[GroundingIssue]:
        return [i for i in self.issues if i.verdict == "contradicted"]

    @property
    def ok(self) -> bool:
        return not self.contradictions

    def to_dict(self) -> dict:
        return {"ok": self.ok, "claims_checked": self.checked, "contradictions": len(self.contradictions),
                "issues": [asdict(i) for i in self.issues]}


def labels_for(analyses: Mapping[str, FaceAnalysis], identities: Iterable[tuple[int | None, str]] = ()) -> dict[str, list[Label]]:
    """Labels per image id from the tools' analyses (plus identity names the gallery matched)."""
    out = {img: model_labels(fa) for img, fa in analyses.items()}
    ids = [estimate("identity", name, "gallery", face_id=fid) for fid, name in identities]
    for labels in out.values():
        labels.extend(ids)
    return out


def _claims(answer: str) -> list[Claim]:
    claims = [c for c in extract_claims(answer) if c.attribute in CHECKED and c.attribute != "head_turn"]
    for sentence in re.split(r"(?<=[.!?;])\s+|\n+", answer):
        low = sentence.lower()
        for m in _TURN.finditer(low):
            claims.append(Claim("head_turn", m.group(1), sentence))
        if _FRONTAL.search(low) and not re.search(r"\bnot\b|n't", low):
            claims.append(Claim("head_turn", "frontal", sentence))
    seen, out = set(), []
    for c in claims:  # "about 80 years old" is one claim, though two patterns read it
        key = (c.attribute, str(c.value), c.sentence)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _scope(labels: list[Label], sentence: str) -> list[Label]:
    faces = set(re.findall(r"\bface (\d+)\b", sentence.lower()))
    if len(faces) != 1:
        return labels
    fid = int(faces.pop())
    return [lb for lb in labels if lb.face_id in (None, fid)]


def _check_turn(c: Claim, labels: list[Label]) -> str | None:
    dirs = [str(lb.value) for lb in labels if lb.name == "head_pose"]
    if c.value == "frontal":
        return None if "frontal" in dirs else f"says the head is frontal; pose says {dirs}"
    return None if any(f"their {c.value}" in d for d in dirs) else \
        f"says the head is turned to their {c.value}; pose says {dirs}"


def check_answer(answer: str, labels_by_image: Mapping[str, list[Label]]) -> GroundingReport:
    """Compare every checked claim in ``answer`` with the labels of the images it may be about."""
    report = GroundingReport()
    claims = _claims(answer)
    for c in claims:
        imgs = [i for i in labels_by_image if re.search(rf"\b{re.escape(i)}\b", c.sentence)] or list(labels_by_image)
        labels = _scope([lb for i in imgs for lb in labels_by_image[i]], c.sentence)
        report.checked += 1
        if c.attribute == "head_turn":
            problem = _check_turn(c, labels)
        else:
            problem = check_claim(c, labels)
        if problem is None:
            continue
        measured = any(lb.name in _LABEL_NAMES.get(c.attribute, ()) for lb in labels)
        if c.attribute == "smile":
            measured = measured or any(lb.name == "expression" for lb in labels)
        report.issues.append(GroundingIssue(c.attribute, c.value, c.sentence,
                                            "contradicted" if measured else "unsupported", problem))
    return report
