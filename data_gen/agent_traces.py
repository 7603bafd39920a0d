"""Agent traces: a question, the tool calls that answer it with the tools' real outputs on the image (run
through tools/registry.py, written in the one tool-call format of facellm/toolcall.py), and a final answer
that cites that evidence.

Scenarios: counting, "which face is smiling", "who is on the left" (gallery or refusal), smiling, head
pose, perceived age, quality for recognition, "is this <enrolled name>?", "who is this?" (named only by a
gallery match, else a refusal), a full description, and a recovered tool error (a face number that does not
exist). Identity comes only from the enrolled gallery (a temporary SQLite in the output folder).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from facellm.toolcall import IMAGE_TOKEN, render_tool_call, render_tool_response
from facellm.tools.registry import ImageStore, ToolError, result_json, run_tool
from facellm.tools.schema import FaceAnalysis

from .schema import Label, Turn, estimate, turn
from .templates import ORDINAL, pick

IMAGE_ID = "image_1"
# Invented names for the offline gallery (no real person in the bundled photos is named anywhere).
OFFLINE_GALLERY = {"astronaut": "Dana Whitfield", "grace_hopper": "Margaret Ellison"}
IDENTITY_SOURCE = "dlib-resnet-v1 + enrolled gallery"


@dataclass
class AgentDraft:
    category: str
    turns: list[Turn]
    labels: list[Label] = field(default_factory=list)  # identity results the answer may cite
    evidence: list[dict] = field(default_factory=list)  # (tool, face_id, value) the answer's claims rest on

    @property
    def question(self) -> str:
        return self.turns[0].value.replace(IMAGE_TOKEN, "").strip()

    @property
    def answer(self) -> str:
        return self.turns[-1].value


class Trace:
    """Builds one trace: every call really runs, its real result becomes the tool turn."""

    def __init__(self, store: ImageStore, question: str, rng: random.Random) -> None:
        self.store, self.rng = store, rng
        self.turns = [turn("human", f"{IMAGE_TOKEN}\n{question}")]
        self.evidence: list[dict] = []

    def call(self, name: str, preface: str = "", **arguments) -> dict:
        args = {"image": IMAGE_ID, **arguments} if name != "verify" else arguments
        try:
            result = run_tool(name, args, self.store)
        except (ToolError, ValueError) as e:  # fed back as an observation, as the agent does
            result = {"error": str(e)}
        text = render_tool_call(name, args)
        self.turns.append(turn("gpt", f"{preface}\n{text}" if preface else text))
        self.turns.append(turn("tool", render_tool_response(result_json(result))))
        return result

    def answer(self, text: str) -> list[Turn]:
        self.turns.append(turn("gpt", text))
        return self.turns

    def cite(self, tool: str, face_id: int | None, value: object) -> None:
        self.evidence.append({"tool": tool, "face_id": face_id, "value": value})


def _where(face: dict, n: int) -> str:
    i = face["face_id"]
    if n <= 1:
        return "the face"
    o = ORDINAL[i - 1] if i <= len(ORDINAL) else f"{i}th"
    return f"face {i} ({face['position']}, {o} from the left)"


def _none_found(tr: Trace, what: str) -> list[Turn]:
    tr.cite("detect", None, 0)
    return tr.answer(pick(tr.rng, [f"I found no face in this image, so I can't tell {what}.",
                                   f"The tools found no face here, so there is nothing to judge {what} from."]))


# ------------------------------------------------------------------ scenarios


def sc_count(tr: Trace, ctx: dict) -> list[Turn] | None:
    r = tr.call("detect", pick(tr.rng, ["", "", "Let me find the faces first."]))
    n = r["num_faces"]
    tr.cite("detect", None, n)
    if n == 0:
        return tr.answer(pick(tr.rng, ["There are no faces in this image: the detector found none.",
                                       "I found no faces in this picture."]))
    words = "one face" if n == 1 else f"{n} faces"
    pos = ", ".join(f["position"] for f in r["faces"])
    return tr.answer(pick(tr.rng, [f"The detector finds {words}" + (f", at: {pos}." if n > 1 else "."),
                                   f"I count {words} in this image.",
                                   f"There {'is' if n == 1 else 'are'} {words} (face detector)."]))


def sc_which_smiling(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] < 2:
        return None
    r = tr.call("expression")
    faces = r["faces"]
    smiling = [f for f in faces if f.get("cues", {}).get("smile", {}).get("active")]
    for f in faces:
        tr.cite("expression", f["face_id"], f.get("cues", {}).get("smile", {}).get("active"))
    n = r["num_faces"]
    if not smiling:
        return tr.answer(f"None of the {n} faces is smiling, according to the smile cue.")
    names = "; ".join(f"{_where(f, n)} (smile score {f['cues']['smile']['score']:.2f})" for f in smiling)
    k = len(smiling)
    lead = f"One of the {n} faces is smiling" if k == 1 else f"{k} of the {n} faces are smiling"
    return tr.answer(f"{lead}: {names}. The others show no smile cue.")


def sc_smiling(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] > 1:
        return None
    r = tr.call("expression")
    if not r["faces"]:
        return _none_found(tr, "whether anyone is smiling")
    f = r["faces"][0]
    cue = f.get("cues", {}).get("smile", {})
    e = f.get("expression", {})
    tr.cite("expression", 1, {"smile": cue.get("active"), "expression": e.get("value")})
    yes = cue.get("active")
    core = ("Yes, the person is smiling" if yes else "No, the person is not smiling")
    return tr.answer(f"{core}: the smile cue scores {cue.get('score', 0):.2f}, and the expression model's top "
                     f"class is {e.get('value')!r} at {round(100 * e.get('probability', 0))}%.")


def sc_pose(tr: Trace, ctx: dict) -> list[Turn] | None:
    fid = 1 if ctx["n"] >= 1 else None
    if ctx["n"] > 1:  # several faces: the question must say which one
        tr.turns[0] = turn("human", f"{IMAGE_TOKEN}\n" + pick(tr.rng, [
            "Which way is the person on the left facing?", "Describe the head pose of the leftmost person.",
            "Is the person on the far left facing the camera?"]))
    r = tr.call("pose", **({"face_id": fid} if ctx["n"] > 1 else {}))
    if not r["faces"]:
        return _none_found(tr, "the head pose")
    f = r["faces"][0]
    p = f["pose"]
    tr.cite("pose", f["face_id"], p["direction"])
    who = "The person" if ctx["n"] <= 1 else f"The leftmost person (face {f['face_id']})"
    return tr.answer(f"{who} is {p['direction']}: yaw {p['yaw']:+.0f}°, pitch {p['pitch']:+.0f}°, "
                     f"roll {p['roll']:+.0f}° (pose estimate).")


def sc_age(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] > 1:
        return None
    r = tr.call("attributes")
    if not r["faces"]:
        return _none_found(tr, "an age")
    f = r["faces"][0]
    a = f.get("perceived_age")
    if a is None:
        return None
    tr.cite("attributes", 1, a["value"])
    lo, hi = a["range"]
    rng_txt = f"about {lo} years" if hi <= lo else f"{lo}-{hi} years"
    return tr.answer(pick(tr.rng, [
        f"The person appears to be around {a['value']} years old (perceived age; the model's range is {rng_txt}). "
        "That is an estimate from appearance, not their actual age.",
        f"Perceived age: {rng_txt}, point estimate {a['value']}. Apparent age can differ from real age."]))


def sc_quality(tr: Trace, ctx: dict) -> list[Turn] | None:
    r = tr.call("quality")
    if not r["faces"]:
        return _none_found(tr, "its quality")
    parts = []
    for f in r["faces"][:3]:
        q = f["quality"]
        tr.cite("quality", f["face_id"], q["usable"])
        reason = f" ({'; '.join(q['reasons'])})" if q["reasons"] else ""
        parts.append(f"{_where(f, r['num_faces']).capitalize()}: {'usable' if q['usable'] else 'not usable'} for "
                     f"recognition, quality {q['score']:.2f}{reason}.")
    n = r["num_faces"]
    if n > 3:
        parts.insert(0, f"There are {n} faces; the three leftmost:")
    return tr.answer(" ".join(parts))


def sc_who(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] != 1:
        return None
    r = tr.call("identify")
    f = r["faces"][0] if r.get("faces") else None
    if f is None:
        return None
    tr.cite("identify", 1, f["name"])
    if f["known"]:
        return tr.answer(f"The gallery matches this face to {f['name']} (similarity {f['similarity']:.2f}, "
                         "within the threshold). That is a model match against the enrolled photos.")
    return tr.answer(pick(tr.rng, [
        "I can't tell who this is: the face does not match anyone enrolled in the gallery, and I only name "
        "people through a gallery match.",
        "This face matches no one in the enrolled gallery, so I won't guess a name. I can describe the face instead."]))


def sc_is_it(tr: Trace, ctx: dict) -> list[Turn] | None:
    names = ctx["gallery_names"]
    if ctx["n"] != 1 or not names:
        return None
    asked = tr.rng.choice(sorted(names))
    tr.turns[0] = turn("human", f"{IMAGE_TOKEN}\n" + pick(tr.rng, [f"Is this {asked}?", f"Is this a photo of {asked}?",
                                                                   f"Can you check whether this is {asked}?"]))
    r = tr.call("identify", top_k=2)
    f = r["faces"][0] if r.get("faces") else None
    if f is None:
        return None
    tr.cite("identify", 1, f["name"])
    if f["known"] and f["name"] == asked:
        return tr.answer(f"Yes: the gallery matches this face to {asked} (similarity {f['similarity']:.2f}).")
    if f["known"]:
        return tr.answer(f"The face matches {f['name']} in the gallery rather than {asked}.")
    return tr.answer(f"I can't confirm that: the face does not match {asked} or anyone else enrolled in the gallery.")


def sc_who_left(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] < 2:
        return None
    d = tr.call("detect")
    tr.cite("detect", None, d["num_faces"])
    r = tr.call("identify", face_id=1)
    f = r["faces"][0] if r.get("faces") else None
    if f is None:
        return None
    tr.cite("identify", 1, f["name"])
    if f["known"]:
        return tr.answer(f"The person on the left (face 1) is matched to {f['name']} in the gallery "
                         f"(similarity {f['similarity']:.2f}).")
    return tr.answer("The person on the left (face 1) does not match anyone enrolled in the gallery, so I can't "
                     "say who they are.")


def sc_describe(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] != 1:
        return None
    r = tr.call("analyze")
    f = r["faces"][0]
    bits = []
    if "pose" in f:
        bits.append(f"the head is {f['pose']['direction']}")
    if "expression" in f:
        bits.append(f"the expression model's top class is {f['expression']['value']!r} "
                    f"({round(100 * f['expression']['probability'])}%)")
    if "cues" in f:
        bits.append("a smile is visible" if f["cues"]["smile"]["active"] else "there is no smile")
    if "perceived_age" in f:
        lo, hi = f["perceived_age"]["range"]
        span = f"{lo}-{hi} years" if hi > lo else "a narrow range"
        bits.append(f"perceived age around {f['perceived_age']['value']} ({span}, an estimate)")
    if "quality" in f:
        bits.append(f"image quality {f['quality']['score']:.2f}")
    tr.cite("analyze", 1, {k: f[k] for k in ("pose", "expression") if k in f})
    return tr.answer("One face: " + "; ".join(bits) + ".")


def sc_bad_face(tr: Trace, ctx: dict) -> list[Turn] | None:
    n = ctx["n"]
    if n == 0:
        return None
    bad = n + tr.rng.randint(1, 3)
    tr.turns[0] = turn("human", f"{IMAGE_TOKEN}\nWhat is the expression of face {bad}?")
    tr.call("expression", face_id=bad)
    tr.cite("expression", None, f"no face {bad}")
    if n == 1:
        return tr.answer(f"There is no face {bad}: this image has only one face (face 1). Ask me about that one.")
    return tr.answer(f"There is no face {bad}: this image has {n} faces, numbered 1 to {n} from the left. "
                     "Ask about one of those.")


SCENARIOS: dict[str, tuple[Callable, list[str]]] = {
    "count": (sc_count, ["How many faces are in this photo?", "How many people are in the picture?",
                         "Count the faces, please."]),
    "which_smiling": (sc_which_smiling, ["Which face is smiling?", "Who is smiling in this photo?",
                                         "Which of these people are smiling?"]),
    "smiling": (sc_smiling, ["Is the person smiling?", "Does this person look happy?", "Is there a smile?"]),
    "head_pose": (sc_pose, ["Which way is the head turned?", "Is the person facing the camera?",
                            "Describe the head pose."]),
    "age": (sc_age, ["How old does this person look?", "Roughly what age is the person?"]),
    "quality": (sc_quality, ["Is this photo good enough for face recognition?", "Check the quality of this face image."]),
    "identify_refusal": (sc_who, ["Who is this?", "Who is the person in this photo?", "Can you tell me this person's name?"]),
    "verify_gallery": (sc_is_it, ["Is this the enrolled person?"]),
    "who_left": (sc_who_left, ["Who is on the left?", "Who is the person on the far left?"]),
    "describe": (sc_describe, ["Tell me about this face.", "Analyse this face.", "Describe the person's face."]),
    "tool_error": (sc_bad_face, ["(set by the scenario)"]),
}


def gallery_for(out_dir: Path, people: dict[str, str]):
    """The trace generator's gallery: ``people`` maps photo name -> invented name, enrolled once."""
    from facellm.tools.gallery import Gallery
    from facellm.tools.photos import photo

    g = Gallery(out_dir / "gallery.sqlite")
    enrolled = {p.name for p in g.list()}
    for photo_name, person in people.items():
        if person not in enrolled:
            try:
                g.enroll(person, photo(photo_name))
            except (ValueError, FileNotFoundError):
                continue
    return g


def agent_drafts(image_path: str, analysis: FaceAnalysis, rng: random.Random, *, gallery=None,
                 per_image: int = 3) -> list[AgentDraft]:
    store = ImageStore({IMAGE_ID: image_path}, gallery=gallery, analyses={IMAGE_ID: analysis})
    ctx = {"n": analysis.num_faces, "gallery_names": {p.name for p in gallery.list()} if gallery is not None else set()}
    names = list(SCENARIOS)
    if gallery is None:
        names = [n for n in names if n not in ("identify_refusal", "verify_gallery", "who_left")]
    rng.shuffle(names)
    out: list[AgentDraft] = []
    for name in names:
        if len(out) >= per_image:
            break
        if name == "tool_error" and rng.random() < 0.7:
            continue  # a few, not one per image
        fn, questions = SCENARIOS[name]
        tr = Trace(store, pick(rng, questions), rng)
        turns = fn(tr, ctx)
        if turns is None:
            continue
        labels = [estimate("identity", e["value"], IDENTITY_SOURCE, face_id=e["face_id"])
                  for e in tr.evidence if e["tool"] == "identify"]
        out.append(AgentDraft(category=name, turns=turns, labels=labels, evidence=tr.evidence))
    return out


def tool_results(draft: AgentDraft) -> list[dict]:
    """The JSON results in a draft's tool turns (for checks and stats)."""
    from facellm.toolcall import parse_tool_responses

    return [r for t in draft.turns if t.from_ == "tool" for r in parse_tool_responses(t.value)]

