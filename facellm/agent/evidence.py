"""Evidence: the (tool, image, face id, attribute, value) facts a tool result holds, in a compact typed form.

The agent's answer cites these; the grounding check compares the answer's claims with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Evidence:
    tool: str
    image: str | None
    face_id: int | None
    attribute: str
    value: Any
    probability: float | None = None  # model estimates that carry one

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("face_id", "value")}


def _face_facts(tool: str, image: str | None, f: dict) -> list[Evidence]:
    fid = f.get("face_id")
    out: list[Evidence] = []

    def add(attr: str, value: Any, p: float | None = None) -> None:
        out.append(Evidence(tool, image, fid, attr, value, p))

    if "pose" in f:
        p = f["pose"]
        add("head_pose", p["direction"])
        add("yaw_pitch_roll", [p["yaw"], p["pitch"], p["roll"]])
    if "expression" in f:
        add("expression", f["expression"]["value"], f["expression"]["probability"])
    if "cues" in f:
        c = f["cues"]
        add("smile", c["smile"]["active"], c["smile"]["score"])
        add("eyes_closed", c["right_eye_closed"]["active"] and c["left_eye_closed"]["active"])
        add("mouth_open", c["mouth_open"]["active"], c["mouth_open"]["score"])
    if "perceived_age" in f:
        a = f["perceived_age"]
        add("perceived_age", a["value"])
        add("perceived_age_range", a["range"], a["probability"])
    if "perceived_gender" in f:
        g = f["perceived_gender"]
        add("perceived_gender", g["value"], g["probability"])
    if "quality" in f:
        add("quality_usable", f["quality"]["usable"])
        add("quality_score", f["quality"]["score"])
    if "landmarks" in f:
        add("inter_ocular_px", f["landmarks"]["inter_ocular_px"])
    if "parse" in f:
        add("absent_regions", f["parse"]["absent"])
    if "known" in f:  # identify
        add("identity", f["name"] if f["known"] else "unknown", f.get("similarity"))
    if tool == "detect":
        add("position", f["position"])
    return out


def evidence_from(tool: str, result: dict) -> list[Evidence]:
    """Every fact in one tool result (a registry result dict)."""
    if tool == "verify":
        return [Evidence("verify", result["image_a"], result["face_a"], "same_person_as",
                         {"image": result["image_b"], "face_id": result["face_b"], "same_person": result["same_person"],
                          "distance": result["distance"], "threshold": result["threshold"]}, result.get("similarity"))]
    image = result.get("image")
    out: list[Evidence] = []
    if "num_faces" in result and tool == "detect":
        out.append(Evidence(tool, image, None, "num_faces", result["num_faces"]))
    for f in result.get("faces", []):
        out.extend(_face_facts(tool, image, f))
    if not out and "num_faces" in result:
        out.append(Evidence(tool, image, None, "num_faces", result["num_faces"]))
    return out
