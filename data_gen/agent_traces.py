"""Agent traces: a question as people ask it, the tool calls that answer it with the tools' real outputs on
the image (run through tools/registry.py, shown to the model as the registry's compact ``observation``, in
the one tool-call format of facellm/toolcall.py), and a short final answer that cites that evidence.

The user turns are written exactly as ``facellm.agent.FaceAgent`` sends them at inference
(``<image>\\n(image_1)Images in this conversation: image_1.\\n<question>``), so the trained model sees the
same text it is prompted with.

Intents (see ``agent_phrasings.PHRASES`` for how each is asked): counting, smiling (one face / which faces /
the most), perceived age, child or adult, oldest / youngest, perceived gender, expression, head pose,
looking at the camera (one face / who), eyes closed (one face / whose), passport-photo checklist, hair
colour, image quality, same person (two images, or two faces of one image), identify (named only by a
gallery match, else a refusal), "is this <name>?", a full description, questions no tool answers, and a
recovered tool error. Faces are singled out by position ("the woman on the right": ``position``), ordinal
("the second face from the left": ``face_id``; "second from the right": detect first) and attribute ("the
youngest one": ``rank`` first). Some traces add a follow-up question that refers back to the same face.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from facellm.toolcall import IMAGE_TOKEN, render_tool_call, render_tool_response
from facellm.tools.registry import ImageStore, ToolError, _by_position, observation_json, run_tool
from facellm.tools.schema import FaceAnalysis

from .agent_phrasings import FOLLOW_UPS, ORDINALS, PHRASES, POSITION_WORDS, SWITCH, casual
from .schema import Label, Turn, estimate, turn
from .templates import pick

IMAGE_ID = "image_1"
# Invented names for the offline gallery (no real person in the bundled photos is named anywhere).
OFFLINE_GALLERY = {"astronaut": "Dana Whitfield", "grace_hopper": "Margaret Ellison"}
IDENTITY_SOURCE = "dlib-resnet-v1 + enrolled gallery"
GENDER_SURE = 0.85  # below this perceived-gender probability a face is "the person", not "the woman"


def user_text(question: str, image_ids: list[str], new: list[str]) -> str:
    """A user turn as FaceAgent writes it: new images as ``<image>\\n(id)``, then the ids line, then the question."""
    head = "".join(f"{IMAGE_TOKEN}\n({i})" for i in new)
    return f"{head}Images in this conversation: {', '.join(image_ids)}.\n{question}"


@dataclass
class AgentDraft:
    category: str
    turns: list[Turn]
    labels: list[Label] = field(default_factory=list)  # identity results the answer may cite
    evidence: list[dict] = field(default_factory=list)  # (tool, face_id, value) the answer's claims rest on
    images: list[str] = field(default_factory=list)  # paths of image_1, image_2, ... in order

    @property
    def question(self) -> str:
        return self.turns[0].value.split("\n")[-1].strip()

    @property
    def answer(self) -> str:
        return self.turns[-1].value


class Trace:
    """Builds one trace: every call really runs, its real result (compacted) becomes the tool turn."""

    def __init__(self, store: ImageStore, question: str, rng: random.Random) -> None:
        self.store, self.rng = store, rng
        self.images = list(store.ids)
        self.turns = [turn("human", user_text(question, self.images, self.images))]
        self.evidence: list[dict] = []

    def set_question(self, question: str) -> None:
        self.turns[0] = turn("human", user_text(question, self.images, self.images))

    def ask(self, question: str) -> None:
        """A follow-up question in the same conversation (no new image)."""
        self.turns.append(turn("human", user_text(question, self.images, [])))

    def call(self, name: str, preface: str = "", **arguments) -> dict:
        args = {"image": IMAGE_ID, **arguments} if name != "verify" else arguments
        try:
            result = run_tool(name, args, self.store)
        except (ToolError, ValueError) as e:  # fed back as an observation, as the agent does
            result = {"error": str(e)}
        text = render_tool_call(name, args)
        self.turns.append(turn("gpt", f"{preface}\n{text}" if preface else text))
        self.turns.append(turn("tool", render_tool_response(observation_json(result))))
        return result

    def answer(self, text: str) -> list[Turn]:
        self.turns.append(turn("gpt", text))
        return self.turns

    def cite(self, tool: str, face_id: int | None, value: object) -> None:
        self.evidence.append({"tool": tool, "face_id": face_id, "value": value})


# ------------------------------------------------------------------ targets: which face a question is about


@dataclass
class Target:
    words: str  # how the question names the face: "the woman on the right"
    args: dict  # tool arguments that select it: {} (the only face), {"position": ...} or {"face_id": k}
    face_id: int | None  # the face it resolves to (known from the analysis)
    pron: str = "they"
    poss: str = "their"
    via: str | None = None  # a tool call needed first to find the face: "rank_age_low", "detect", ...


def _gender(fa: FaceAnalysis, face_id: int) -> str | None:
    a = fa.face(face_id).attributes
    g = a.perceived_gender if a is not None else None
    return g.value if g is not None and g.probability >= GENDER_SURE else None


def _noun(rng: random.Random, gender: str | None) -> tuple[str, str, str]:
    if gender == "female":
        return pick(rng, ["woman", "woman", "lady", "person"]), "she", "her"
    if gender == "male":
        return pick(rng, ["man", "man", "guy", "person"]), "he", "his"
    return pick(rng, ["person", "person", "face", "one"]), "they", "their"


def _with_pron(t: Target, noun: str, pron: str, poss: str) -> Target:
    if noun in ("person", "face", "one"):
        pron, poss = "they", "their"
    t.pron, t.poss = pron, poss
    return t


def single_target(fa: FaceAnalysis, rng: random.Random) -> Target:
    g = _gender(fa, 1) if fa.faces else None
    noun, pron, poss = _noun(rng, g)
    words = pick(rng, [f"the {noun}", f"this {noun}", "the person", "this person"])
    return _with_pron(Target(words, {}, 1), words.split()[-1], pron, poss)


def _age(fa: FaceAnalysis, face_id: int) -> float | None:
    a = fa.face(face_id).attributes
    return a.perceived_age.value if a is not None and a.perceived_age is not None else None


def multi_target(fa: FaceAnalysis, rng: random.Random, *, allow_via: bool = True) -> Target:
    """A face of a multi-face image, named by position, ordinal or attribute (resolved from the analysis)."""
    n = fa.num_faces
    kinds = ["position", "position", "ordinal", "face_number"] + (["ordinal_right", "age", "gender"] if allow_via else [])
    for _ in range(6):
        kind = rng.choice(kinds)
        if kind == "position":
            key = rng.choice(list(POSITION_WORDS))
            f = _by_position(fa, key)
            if key in ("top", "bottom", "top left", "top right", "bottom left", "bottom right"):
                # only when the words truly fit that face (its own position words say so)
                from facellm.tools.registry import position_words

                if key.split()[0] not in position_words(f, fa.image.width, fa.image.height):
                    continue
            if key in ("largest", "smallest") and n > 1:
                areas = sorted(x.box.area for x in fa.faces)
                if areas[-1] < 1.3 * areas[-2] if key == "largest" else areas[1] < 1.3 * areas[0]:
                    continue  # no clear biggest / smallest face
            noun, pron, poss = _noun(rng, _gender(fa, f.id))
            w = pick(rng, POSITION_WORDS[key])
            words = f"the {w} {noun}" if w in ("leftmost", "rightmost") else f"the {noun} {w}"
            return _with_pron(Target(words, {"position": key}, f.id), noun, pron, poss)
        if kind == "ordinal" and n <= len(ORDINALS):
            k = rng.randint(1, n)
            noun, pron, poss = _noun(rng, _gender(fa, k))
            words = pick(rng, [f"the {ORDINALS[k - 1]} {noun} from the left", f"the {ORDINALS[k - 1]} face from the left"])
            return _with_pron(Target(words, {"face_id": k}, k), noun if "face" not in words else "face", pron, poss)
        if kind == "face_number":
            k = rng.randint(1, n)
            return Target(pick(rng, [f"face {k}", f"person {k}", f"face number {k}"]), {"face_id": k}, k)
        if kind == "ordinal_right" and 2 <= n <= len(ORDINALS):
            k = rng.randint(2, n)  # k-th from the right = face n - k + 1 (1 = leftmost); needs the count
            fid = n - k + 1
            noun, pron, poss = _noun(rng, _gender(fa, fid))
            return _with_pron(Target(f"the {ORDINALS[k - 1]} {noun} from the right", {"face_id": fid}, fid,
                                     via="detect"), noun, pron, poss)
        if kind == "age":
            ages = [(a, f.id) for f in fa.faces if (a := _age(fa, f.id)) is not None]
            if len(ages) < 2:
                continue
            ages.sort()
            young = rng.random() < 0.5
            if (ages[1][0] - ages[0][0] < 3) if young else (ages[-1][0] - ages[-2][0] < 3):
                continue  # no clear youngest / oldest
            fid = ages[0][1] if young else ages[-1][1]
            noun, pron, poss = _noun(rng, _gender(fa, fid))
            sup = "youngest" if young else "oldest"
            words = pick(rng, [f"the {sup} {noun}", f"the {sup} one", f"the {sup}-looking person"])
            return _with_pron(Target(words, {"face_id": fid}, fid, via=f"rank_age_{'low' if young else 'high'}"),
                              noun if "one" not in words else "one", pron, poss)
        if kind == "gender":
            gs = {f.id: _gender(fa, f.id) for f in fa.faces}
            for g, noun, pron, poss in (("female", "woman", "she", "her"), ("male", "man", "he", "his")):
                ids = [i for i, v in gs.items() if v == g]
                if len(ids) == 1 and all(v is not None for v in gs.values()):
                    return Target(f"the {noun}", {"face_id": ids[0]}, ids[0], pron, poss, via="attributes")
    f = fa.faces[0]
    return Target("the person on the left", {"position": "left"}, _by_position(fa, "left").id)


def resolve(tr: Trace, t: Target) -> dict:
    """Make the calls a target needs before its own (the count, a ranking, the attributes); returns its args."""
    if t.via == "detect":
        r = tr.call("detect")
        tr.cite("detect", None, r.get("num_faces"))
    elif t.via and t.via.startswith("rank_age"):
        r = tr.call("rank", by="age")
        key = "lowest" if t.via.endswith("low") else "highest"
        tr.cite("rank", r.get(key), f"{key} perceived age")
    elif t.via == "attributes":
        tr.call("attributes")
    return dict(t.args)


def _q(rng: random.Random, intent: str, **slots) -> str:
    options = PHRASES[intent]
    if slots.get("who") and not slots.get("single"):  # a face singled out: the question must name it
        options = [t for t in options if "{who}" in t] or options
    slots.pop("single", None)
    text = pick(rng, options).format(**slots)
    return casual(text[:1].upper() + text[1:], rng)


def _face(r: dict) -> dict | None:
    faces = r.get("faces") or []
    return faces[0] if faces else None


def _label(t: Target | None, n: int, f: dict | None) -> str:
    """How the answer names the face: 'The person' (one face) or 'Face 3 (right)'."""
    if n <= 1 or f is None:
        return "The person"
    return f"Face {f['face_id']} ({f['position']})"


def _none_found(tr: Trace, what: str) -> list[Turn]:
    tr.cite("detect", None, 0)
    return tr.answer(pick(tr.rng, [f"I found no face in this image, so I can't tell {what}.",
                                   f"The tools found no face here, so there is nothing to judge {what} from."]))


# ------------------------------------------------------------------ per-face answers (one face's result)


def _smile_answer(f: dict, who: str, rng: random.Random) -> str:
    cue = f.get("cues", {}).get("smile", {})
    e = f.get("expression", {})
    yes = cue.get("active")
    core = f"Yes, {who[:1].lower() + who[1:]} is smiling" if yes else f"No, {who[:1].lower() + who[1:]} is not smiling"
    return (f"{core}: smile score {cue.get('score', 0):.2f} (the cue's threshold is 0.5); the expression model's "
            f"top class is {e.get('value')!r} ({round(100 * e.get('probability', 0))}%).")


def _age_answer(f: dict, who: str, rng: random.Random, question: str) -> str:
    a = f.get("perceived_age")
    if a is None:
        return f"The age model gave no estimate for {who.lower()}."
    lo, hi = a["range"]
    span = f", range {lo}-{hi}" if hi > lo else ""
    v = a["value"]
    q = question.lower()
    extra = ""
    if "older than 40" in q:
        extra = f" So {'yes' if v > 40 else 'no'}, by that estimate. "
    elif "twenties" in q:
        extra = f" So {'yes' if 20 <= v < 30 else 'no'}, by that estimate. "
    elif "teenager" in q:
        extra = f" So {'yes' if 13 <= v < 20 else 'no'}, by that estimate. "
    elif "young or old" in q:
        extra = f" That reads as {'young' if v < 35 else 'middle-aged' if v < 60 else 'older'}. "
    return (f"{who} looks about {v} years old (perceived age estimate{span}).{extra}"
            " Apparent age can differ from real age.").replace("  ", " ")


def _child_answer(f: dict, who: str) -> str:
    a = f.get("perceived_age")
    if a is None:
        return f"The age model gave no estimate for {who.lower()}, so I can't say."
    v = a["value"]
    verdict = "looks like a child" if v < 13 else "looks like a teenager" if v < 18 else "looks like an adult"
    yes = "Yes" if v < 13 else "No"
    lo, hi = a["range"]
    span = f", range {lo}-{hi}" if hi > lo else ""
    return f"{yes}: {who[:1].lower() + who[1:]} {verdict}, perceived age about {v} (estimate{span})."


def _gender_answer(f: dict, who: str) -> str:
    g = f.get("perceived_gender")
    if g is None:
        return f"The attribute model gave no gender estimate for {who.lower()}."
    word = {"female": "a woman", "male": "a man"}.get(g["value"], g["value"])
    return (f"{who} is perceived as {word} ({round(100 * g['probability'])}% by the attribute model). That is an "
            "estimate from appearance, not the person's identity.")


_EMO = {"happy": "happy", "sad": "sad", "angry": "angry", "surprise": "surprised", "fear": "fearful",
        "disgust": "disgusted", "neutral": "neutral", "contempt": "contemptuous"}


def _expression_answer(f: dict, who: str, question: str) -> str:
    e = f.get("expression")
    if e is None:
        return f"The expression model gave no estimate for {who.lower()}."
    top = e["value"]
    q = question.lower()
    asked = next((k for k, w in (("sad", "sad"), ("angry", "angry"), ("surprise", "surprised"), ("fear", "scared"),
                                  ("sad", "upset"), ("angry", "frowning")) if w in q), None)
    lead = ""
    if asked is not None:
        lead = "Yes: " if top == asked else "Not by the model: "
    return (f"{lead}{who} looks {_EMO.get(top, top)} — the expression model's top class is {top!r} at "
            f"{round(100 * e['probability'])}% (an estimate from the face).")


def _pose_answer(f: dict, who: str) -> str:
    p = f.get("pose")
    if p is None:
        return f"There is no head-pose estimate for {who.lower()}."
    return f"{who} is {p['direction']}: yaw {p['yaw']:+.0f}°, pitch {p['pitch']:+.0f}°, roll {p['roll']:+.0f}° (pose estimate)."


def _gaze_answer(f: dict, who: str) -> str:
    g = f.get("gaze")
    if g is None:
        return f"There is no gaze estimate for {who.lower()}."
    verdict = "is looking at the camera" if g["looking_at_camera"] else "is not looking at the camera"
    return (f"{who} {verdict}: head {g['head']} (yaw {g['yaw']:+.0f}°, pitch {g['pitch']:+.0f}°), "
            f"{g['eyes']}.")


def _eyes(f: dict) -> tuple[float, float] | None:
    c = f.get("cues")
    if c is None:
        return None
    return c["right_eye_closed"]["score"], c["left_eye_closed"]["score"]


def _eyes_answer(f: dict, who: str) -> str:
    e = _eyes(f)
    if e is None:
        return f"There is no eye measurement for {who.lower()}."
    r, l = e
    if r >= 0.5 and l >= 0.5:
        v = "has both eyes closed"
    elif r >= 0.5 or l >= 0.5:
        v = "has one eye that reads closed or nearly"
    else:
        v = "has the eyes open"
    return f"{who} {v}: eye-closed scores {r:.2f} (right) and {l:.2f} (left); 0.5 or more counts as closed."


def _hair_answer(f: dict, who: str) -> str:
    if not f.get("hair_visible"):
        return f"I can't see {who.lower()}'s hair: the parser found no hair region, so no colour can be measured."
    return (f"The hair of {who[:1].lower() + who[1:]} looks {f['hair_colour']} (colour of the parser's hair region; lighting can shift it, "
            "and head coverings count as hair).")


def _quality_answer(f: dict, who: str) -> str:
    q = f["quality"]
    reason = f" ({'; '.join(q['reasons'])})" if q["reasons"] else ""
    return (f"{who}: {'usable' if q['usable'] else 'not usable'} for recognition{reason}; quality score "
            f"{q['score']:.2f}, sharpness {q['blur']:.2f}.")


def _describe_answer(f: dict, who: str) -> str:
    bits = []
    if "pose" in f:
        bits.append(f"head {f['pose']['direction']}")
    if "expression" in f:
        bits.append(f"expression {f['expression']['value']!r} ({round(100 * f['expression']['probability'])}%)")
    if "cues" in f:
        bits.append("smiling" if f["cues"]["smile"]["active"] else "no smile")
    if "perceived_age" in f:
        bits.append(f"perceived age about {f['perceived_age']['value']} (estimate)")
    if "perceived_gender" in f:
        g = f["perceived_gender"]
        bits.append(f"perceived as {g['value']} ({round(100 * g['probability'])}%)")
    if "quality" in f:
        bits.append(f"quality {f['quality']['score']:.2f}")
    return f"{who}: " + "; ".join(bits) + "."


# ------------------------------------------------------------------ scenarios

# (tool, per-face answer) for the per-face intents
_PER_FACE: dict[str, tuple[str, Callable]] = {
    "smiling": ("expression", lambda f, w, q, rng: _smile_answer(f, w, rng)),
    "age": ("attributes", lambda f, w, q, rng: _age_answer(f, w, rng, q)),
    "child": ("attributes", lambda f, w, q, rng: _child_answer(f, w)),
    "gender": ("attributes", lambda f, w, q, rng: _gender_answer(f, w)),
    "expression": ("expression", lambda f, w, q, rng: _expression_answer(f, w, q)),
    "head_pose": ("pose", lambda f, w, q, rng: _pose_answer(f, w)),
    "gaze": ("gaze", lambda f, w, q, rng: _gaze_answer(f, w)),
    "eyes_closed": ("expression", lambda f, w, q, rng: _eyes_answer(f, w)),
    "hair": ("hair", lambda f, w, q, rng: _hair_answer(f, w)),
    "describe": ("analyze", lambda f, w, q, rng: _describe_answer(f, w)),
}


def _who_words(t: Target, n: int) -> str:
    w = t.words
    return w[:1].upper() + w[1:] if n > 1 else ("The person" if w in ("her", "him") else w[:1].upper() + w[1:])


def per_face(intent: str, tr: Trace, ctx: dict, target: Target | None = None, question: str | None = None):
    n = ctx["n"]
    fa: FaceAnalysis = ctx["fa"]
    if n == 0:
        return None
    t = target or (single_target(fa, tr.rng) if n == 1 else multi_target(fa, tr.rng))
    if question is None:
        question = _q(tr.rng, intent, who=t.words, single=n == 1)
        tr.set_question(question)
    args = resolve(tr, t)
    tool, answer = _PER_FACE[intent]
    r = tr.call(tool, **args)
    f = _face(r)
    if f is None:
        return None
    tr.cite(tool, f["face_id"], intent)
    who = _who_words(t, n)
    if n > 1:
        who = f"{who} (face {f['face_id']})"
    tr.answer(answer(f, who, question, tr.rng))
    ctx["last_target"] = t
    return tr.turns


def _scenario(intent: str) -> Callable:
    return lambda tr, ctx: per_face(intent, tr, ctx)


def sc_count(tr: Trace, ctx: dict) -> list[Turn] | None:
    q = _q(tr.rng, "count")
    tr.set_question(q)
    r = tr.call("detect")
    n = r["num_faces"]
    tr.cite("detect", None, n)
    if n == 0:
        return tr.answer(pick(tr.rng, ["There are no faces in this image: the detector found none.",
                                       "I found no faces in this picture."]))
    words = "one face" if n == 1 else f"{n} faces"
    ql = q.lower()
    lead = ""
    if "more than two" in ql:
        lead = "Yes. " if n > 2 else "No. "
    elif "single person or a group" in ql or "just one person" in ql:
        lead = "Just one person. " if n == 1 else "A group. "
    elif "group photo" in ql or "several people" in ql:
        lead = "Yes. " if n > 1 else "No, just one person. "
    elif "anybody" in ql:
        lead = "Yes. "
    pos = ", ".join(f["position"] for f in r["faces"])
    return tr.answer(lead + pick(tr.rng, [f"The detector finds {words}" + (f", at: {pos}." if n > 1 else "."),
                                          f"I count {words} in this image (face detector).",
                                          f"There {'is' if n == 1 else 'are'} {words} (face detector)."]))


def _list_faces(faces: list[dict]) -> str:
    return ", ".join(f"face {f['face_id']} ({f['position']})" for f in faces)


def sc_which_smiling(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] < 2:
        return None
    tr.set_question(_q(tr.rng, "which_smiling"))
    r = tr.call("expression")
    faces = r["faces"]
    smiling = [f for f in faces if f.get("cues", {}).get("smile", {}).get("active")]
    for f in faces:
        tr.cite("expression", f["face_id"], f.get("cues", {}).get("smile", {}).get("active"))
    n = r["num_faces"]
    if not smiling:
        return tr.answer(f"None of the {n} faces is smiling: every smile score is below 0.5.")
    names = "; ".join(f"face {f['face_id']} ({f['position']}, smile score {f['cues']['smile']['score']:.2f})"
                      for f in smiling)
    k = len(smiling)
    lead = f"One of the {n} faces is smiling" if k == 1 else ("All" if k == n else f"{k} of the") + f" {n} faces are smiling" \
        if k > 1 else ""
    rest = "" if k == n else " The others show no smile (score below 0.5)."
    return tr.answer(f"{lead}: {names}.{rest}")


def _rank(tr: Trace, ctx: dict, by: str, intent: str, high: bool, what: str) -> list[Turn] | None:
    if ctx["n"] < 2:
        return None
    tr.set_question(_q(tr.rng, intent))
    r = tr.call("rank", by=by)
    order = r.get("order") or []
    if len(order) < 2:
        return None
    top = order[0] if high else order[-1]
    tr.cite("rank", top["face_id"], f"{intent}")
    if by == "smile" and order[0]["value"] < 0.5:
        return tr.answer(f"Nobody here is clearly smiling: every smile score is below 0.5 (the highest is face "
                         f"{order[0]['face_id']}, {order[0]['position']}, at {order[0]['value']:.2f}).")
    unit = {"age": "perceived age about {v:.0f} (estimate)", "smile": "smile score {v:.2f}"}[by]
    rest = "; ".join(f"face {o['face_id']}: " + unit.format(v=o["value"]) for o in order if o is not top)
    return tr.answer(f"Face {top['face_id']} ({top['position']}) {what}: " + unit.format(v=top["value"]) +
                     f". The others: {rest}.")


def sc_most_smiling(tr, ctx):
    q_least = None
    out = _rank(tr, ctx, "smile", "most_smiling", True, "has the biggest smile")
    if out is None:
        return None
    q = tr.turns[0].value.lower()
    if "least" in q:  # "who is the least smiley": the other end of the same ranking
        q_least = True
    if q_least:
        tr.turns.pop()
        r = run_tool("rank", {"image": IMAGE_ID, "by": "smile"}, tr.store)
        low = r["order"][-1]
        tr.answer(f"Face {low['face_id']} ({low['position']}) smiles the least: smile score {low['value']:.2f}. "
                  f"The biggest smile is face {r['order'][0]['face_id']} ({r['order'][0]['value']:.2f}).")
    return tr.turns


def sc_oldest(tr, ctx):
    return _rank(tr, ctx, "age", "oldest", True, "looks the oldest")


def sc_youngest(tr, ctx):
    out = _rank(tr, ctx, "age", "youngest", False, "looks the youngest")
    if out is not None:
        tr.turns[-1] = turn("gpt", tr.turns[-1].value + " Ages are perceived estimates from appearance.")
    return out


def sc_who_gaze(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] < 2:
        return None
    tr.set_question(_q(tr.rng, "who_gaze"))
    r = tr.call("gaze")
    faces = r["faces"]
    yes = [f for f in faces if f.get("gaze", {}).get("looking_at_camera")]
    no = [f for f in faces if f.get("gaze") and not f["gaze"]["looking_at_camera"]]
    for f in faces:
        tr.cite("gaze", f["face_id"], f.get("gaze", {}).get("looking_at_camera"))
    if not yes:
        return tr.answer(f"Nobody is looking at the camera: all {len(faces)} faces have the head or eyes turned away "
                         "(gaze estimate).")
    if not no:
        return tr.answer(f"Everyone is looking at the camera: all {len(faces)} faces have head and eyes towards it "
                         "(gaze estimate).")
    return tr.answer(f"Looking at the camera: {_list_faces(yes)}. Looking away: {_list_faces(no)} (gaze estimate: "
                     "head pose plus eye direction).")


def sc_who_eyes(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] < 2:
        return None
    tr.set_question(_q(tr.rng, "who_eyes_closed"))
    r = tr.call("expression")
    faces = r["faces"]
    closed = [f for f in faces if (e := _eyes(f)) is not None and max(e) >= 0.5]
    for f in faces:
        tr.cite("expression", f["face_id"], _eyes(f))
    if not closed:
        return tr.answer(f"All {len(faces)} faces have their eyes open: every eye-closed score is below 0.5.")
    desc = "; ".join(f"face {f['face_id']} ({f['position']}, eye-closed scores {_eyes(f)[0]:.2f} / {_eyes(f)[1]:.2f})"
                     for f in closed)
    return tr.answer(f"Closed or nearly closed eyes (a score of 0.5 or more): {desc}. The other faces have open eyes.")


def sc_passport(tr: Trace, ctx: dict) -> list[Turn] | None:
    tr.set_question(_q(tr.rng, "passport"))
    r = tr.call("passport")
    tr.cite("passport", None, r.get("suitable"))
    checks = r.get("checks", [])
    if r.get("num_faces", 0) != 1:
        n = r.get("num_faces", 0)
        found = "no face" if n == 0 else f"{n} faces"
        return tr.answer(f"No: the detector found {found} here, and a passport photo must show the applicant alone, "
                         "face clearly visible.")
    items = "; ".join(f"{_CHECK_WORDS.get(c['check'], c['check'])}: {'ok' if c['ok'] else 'fails'} ({c['measured']})"
                      for c in checks[1:])
    verdict = "Yes, it passes every check I can measure" if r["suitable"] else \
        f"Not as it is: it fails {', '.join(_CHECK_WORDS.get(c, c) for c in r['failed'])}"
    return tr.answer(f"{verdict}. {items}. Background colour and glare are not measured.")


# check names as the answer words them (the fact check reads "neutral" as an expression claim)
_CHECK_WORDS = {"neutral expression": "expression check"}


def sc_quality(tr: Trace, ctx: dict) -> list[Turn] | None:
    tr.set_question(_q(tr.rng, "quality"))
    r = tr.call("quality")
    if not r["faces"]:
        return _none_found(tr, "its quality")
    n = r["num_faces"]
    parts = []
    for f in r["faces"][:3]:
        tr.cite("quality", f["face_id"], f["quality"]["usable"])
        parts.append(_quality_answer(f, "The face" if n == 1 else f"Face {f['face_id']} ({f['position']})"))
    if n > 3:
        parts.insert(0, f"There are {n} faces; the three leftmost:")
    return tr.answer(" ".join(parts))


def sc_same_person(tr: Trace, ctx: dict) -> list[Turn] | None:
    """Two images (image_2 given): are they one person?"""
    if "image_2" not in tr.store or ctx["n"] == 0:
        return None
    tr.set_question(_q(tr.rng, "same_person"))
    r = tr.call("verify", image_a="image_1", image_b="image_2")
    if "error" in r:
        return tr.answer(f"I couldn't compare them: {r['error']}.")
    tr.cite("verify", None, r["same_person"])
    verdict = "Yes, they look like the same person" if r["same_person"] else "No, they look like different people"
    return tr.answer(f"{verdict}: face similarity {r['similarity']:.2f}, and the face-descriptor comparison says "
                     f"{'same' if r['same_person'] else 'different'} person. This is a model comparison, not proof.")


def sc_same_in_image(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] < 2:
        return None
    fa = ctx["fa"]
    a = multi_target(fa, tr.rng, allow_via=False)
    for _ in range(4):
        b = multi_target(fa, tr.rng, allow_via=False)
        if b.face_id != a.face_id:
            break
    else:
        return None
    tr.set_question(_q(tr.rng, "same_person_one_image", a=a.words, b=b.words))
    r = tr.call("verify", image_a="image_1", image_b="image_1", face_a=a.face_id, face_b=b.face_id)
    if "error" in r:
        return None
    tr.cite("verify", None, r["same_person"])
    verdict = "the same person" if r["same_person"] else "different people"
    return tr.answer(f"Face {a.face_id} and face {b.face_id} look like {verdict}: similarity {r['similarity']:.2f} "
                     "(face-descriptor comparison, a model estimate).")


def sc_who(tr: Trace, ctx: dict) -> list[Turn] | None:
    n = ctx["n"]
    if n == 0:
        return None
    if n == 1:
        tr.set_question(_q(tr.rng, "identify"))
        args, who = {}, "this face"
    else:
        t = multi_target(tr.store.analysis(IMAGE_ID, ()), tr.rng, allow_via=False)
        tr.set_question(_q(tr.rng, "identify_target", who=t.words))
        args, who = dict(t.args), t.words
    r = tr.call("identify", **args)
    f = _face(r)
    if f is None:
        return None
    tr.cite("identify", f["face_id"], f["name"])
    if n > 1:
        who = f"{who} (face {f['face_id']})"
    if f["known"]:
        return tr.answer(f"The gallery matches {who} to {f['name']} (similarity {f['similarity']:.2f}, within the "
                         "threshold). That is a model match against the enrolled photos.")
    return tr.answer(pick(tr.rng, [
        f"I can't tell who that is: {who} does not match anyone enrolled in the gallery, and I only name people "
        "through a gallery match.",
        f"{who[:1].upper() + who[1:]} matches no one in the enrolled gallery, so I won't guess a name. I can describe "
        "the face instead."]))


def sc_is_it(tr: Trace, ctx: dict) -> list[Turn] | None:
    names = ctx["gallery_names"]
    if ctx["n"] != 1 or not names:
        return None
    asked = tr.rng.choice(sorted(names))
    tr.set_question(_q(tr.rng, "is_it", name=asked))
    r = tr.call("identify", top_k=2)
    f = _face(r)
    if f is None:
        return None
    tr.cite("identify", 1, f["name"])
    if f["known"] and f["name"] == asked:
        return tr.answer(f"Yes: the gallery matches this face to {asked} (similarity {f['similarity']:.2f}).")
    if f["known"]:
        return tr.answer(f"No: the gallery matches this face to {f['name']} (similarity {f['similarity']:.2f}), not to "
                         "the person you named.")
    return tr.answer("I can't confirm that: the face matches no one enrolled in the gallery, so I can't say it is the "
                     "person you named.")


def sc_who_left(tr: Trace, ctx: dict) -> list[Turn] | None:
    if ctx["n"] < 2 or not ctx["gallery_names"]:
        return None
    tr.set_question(pick(tr.rng, ["Who is on the left?", "Who is the person on the far left?",
                                  "Who's the leftmost person?"]))
    r = tr.call("identify", position="left")
    f = _face(r)
    if f is None:
        return None
    tr.cite("identify", f["face_id"], f["name"])
    if f["known"]:
        return tr.answer(f"The person on the left (face {f['face_id']}) is matched to {f['name']} in the gallery "
                         f"(similarity {f['similarity']:.2f}).")
    return tr.answer(f"The person on the left (face {f['face_id']}) does not match anyone enrolled in the gallery, "
                     "so I can't say who they are.")


_UNMEASURED = {"wearing": "clothing", "background": "the background", "makeup": "makeup", "taken": "where a photo "
               "was taken", "rich": "wealth", "job": "occupation", "married": "marital status",
               "nationality": "nationality"}


def sc_unmeasured(tr: Trace, ctx: dict) -> list[Turn] | None:
    n = ctx["n"]
    if n == 0:
        return None
    fa = ctx["fa"]
    t = single_target(fa, tr.rng) if n == 1 else multi_target(fa, tr.rng, allow_via=False)
    q = _q(tr.rng, "unmeasured", who=t.words, single=n == 1)
    tr.set_question(q)
    ql = q.lower()
    if "race" in ql or "ethnic" in ql:
        return tr.answer("I don't estimate race or ethnicity: no tool here measures it, and guessing it from a face "
                         "is not something I do. I can tell you the perceived age, expression or head pose instead.")
    what = next((v for k, v in _UNMEASURED.items() if k in ql), "that")
    # answer the measurable part: what the face tools do see of that face
    r = tr.call("analyze", **t.args)
    f = _face(r)
    if f is None:
        return None
    tr.cite("analyze", f["face_id"], "describe")
    who = _who_words(t, n) + (f" (face {f['face_id']})" if n > 1 else "")
    return tr.answer(f"No tool here measures {what}, so I can't say. What the face tools do measure: "
                     f"{_describe_answer(f, who)}")


def sc_bad_face(tr: Trace, ctx: dict) -> list[Turn] | None:
    n = ctx["n"]
    if n == 0:
        return None
    bad = n + tr.rng.randint(1, 3)
    tr.set_question(casual(pick(tr.rng, [f"What is the expression of face {bad}?", f"Is face {bad} smiling?",
                                         f"How old is person {bad}?"]), tr.rng))
    tool = "attributes" if "old" in tr.turns[0].value else "expression"
    tr.call(tool, face_id=bad)
    tr.cite(tool, None, f"no face {bad}")
    if n == 1:
        return tr.answer(f"There is no face {bad}: this image has only one face (face 1). Ask me about that one.")
    return tr.answer(f"There is no face {bad}: this image has {n} faces, numbered 1 to {n} from the left. "
                     "Ask about one of those.")


def sc_multistep(tr: Trace, ctx: dict) -> list[Turn] | None:
    """A question that needs one tool's answer to aim the next: 'How old does the biggest smiler look?'."""
    if ctx["n"] < 2:
        return None
    by, first_q, then = tr.rng.choice([
        ("smile", "the person with the biggest smile", "age"),
        ("smile", "the one smiling most", "gaze"),
        ("age", "the oldest person", "smiling"),
        ("age", "the youngest one", "smiling"),
        ("age", "the oldest-looking person", "hair"),
        ("age", "the youngest person", "gaze"),
    ])
    low = "youngest" in first_q
    q = _q(tr.rng, then, who=first_q)
    tr.set_question(q)
    r = tr.call("rank", by=by)
    order = r.get("order") or []
    if len(order) < 2:
        return None
    pickd = order[-1] if low else order[0]
    tr.cite("rank", pickd["face_id"], by)
    tool, answer = _PER_FACE[then]
    r2 = tr.call(tool, face_id=pickd["face_id"])
    f = _face(r2)
    if f is None:
        return None
    tr.cite(tool, f["face_id"], then)
    return tr.answer(answer(f, f"{first_q[:1].upper() + first_q[1:]} (face {f['face_id']}, {f['position']})", q, tr.rng))


def with_follow_up(intent: str) -> Callable:
    """A per-face question, then a follow-up about the same face ('And how old does she look?'), sometimes a
    switch to another face ('What about the man on the left?')."""

    def run(tr: Trace, ctx: dict):
        if per_face(intent, tr, ctx) is None:
            return None
        t: Target = ctx["last_target"]
        n, fa = ctx["n"], ctx["fa"]
        if n > 1 and tr.rng.random() < 0.35:  # the same question about another face
            other = multi_target(fa, tr.rng, allow_via=False)
            if other.face_id == t.face_id:
                return tr.turns
            q = casual(pick(tr.rng, SWITCH).format(who=other.words), tr.rng)
            tr.ask(q)
            tool, answer = _PER_FACE[intent]
            r = tr.call(tool, **other.args)
            f = _face(r)
            if f is None:
                return None
            tr.cite(tool, f["face_id"], intent)
            tr.answer(answer(f, f"{_who_words(other, n)} (face {f['face_id']})", tr.turns[0].value, tr.rng))
            return tr.turns
        nxt = tr.rng.choice([k for k in FOLLOW_UPS if k != intent])
        q = casual(pick(tr.rng, FOLLOW_UPS[nxt]).format(pron=t.pron, poss=t.poss), tr.rng)
        tr.ask(q)
        tool, answer = _PER_FACE[nxt]
        args = {"face_id": t.face_id} if n > 1 else {}
        r = tr.call(tool, **args)
        f = _face(r)
        if f is None:
            return None
        tr.cite(tool, f["face_id"], nxt)
        who = "The person" if n == 1 else f"Face {f['face_id']} ({f['position']})"
        tr.answer(answer(f, who, q, tr.rng))
        return tr.turns

    return run


# name -> (scenario, how often it is tried relative to the others)
SCENARIOS: dict[str, tuple[Callable, float]] = {
    "count": (sc_count, 1.0),
    "which_smiling": (sc_which_smiling, 1.0),
    "most_smiling": (sc_most_smiling, 0.8),
    "oldest": (sc_oldest, 0.8),
    "youngest": (sc_youngest, 0.8),
    "who_gaze": (sc_who_gaze, 0.8),
    "who_eyes_closed": (sc_who_eyes, 0.8),
    "smiling": (_scenario("smiling"), 1.0),
    "age": (_scenario("age"), 1.0),
    "child": (_scenario("child"), 0.7),
    "gender": (_scenario("gender"), 0.8),
    "expression": (_scenario("expression"), 1.0),
    "head_pose": (_scenario("head_pose"), 0.8),
    "gaze": (_scenario("gaze"), 1.0),
    "eyes_closed": (_scenario("eyes_closed"), 0.9),
    "hair": (_scenario("hair"), 0.9),
    "describe": (_scenario("describe"), 0.5),
    "passport": (sc_passport, 0.8),
    "quality": (sc_quality, 0.5),
    "same_person": (sc_same_person, 1.5),
    "same_in_image": (sc_same_in_image, 0.6),
    "identify_refusal": (sc_who, 0.8),
    "verify_gallery": (sc_is_it, 0.4),
    "who_left": (sc_who_left, 0.3),
    "unmeasured": (sc_unmeasured, 0.5),
    "multistep": (sc_multistep, 0.9),
    "follow_up": (None, 1.0),  # built per draw from a per-face intent (with_follow_up)
    "tool_error": (sc_bad_face, 0.25),
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
                 per_image: int = 3, partner: tuple[str, FaceAnalysis] | None = None) -> list[AgentDraft]:
    """Up to ``per_image`` traces about one image (``partner``: a second image for the two-image questions)."""
    images = {IMAGE_ID: image_path}
    analyses = {IMAGE_ID: analysis}
    if partner is not None:
        images["image_2"], analyses["image_2"] = partner
    ctx_base = {"n": analysis.num_faces, "fa": analysis,
                "gallery_names": {p.name for p in gallery.list()} if gallery is not None else set()}
    names = [k for k in SCENARIOS if gallery is not None or k not in ("identify_refusal", "verify_gallery", "who_left")]
    weights = [SCENARIOS[k][1] for k in names]
    out: list[AgentDraft] = []
    tried: set[str] = set()
    for _ in range(per_image * 4):
        if len(out) >= per_image:
            break
        name = rng.choices(names, weights)[0]
        if name in tried:
            continue
        tried.add(name)
        if name == "follow_up":
            fn = with_follow_up(rng.choice(list(_PER_FACE)))
        else:
            fn = SCENARIOS[name][0]
        two = name == "same_person"
        if two and partner is None:
            continue
        # a fresh store per trace: the second image is offered only to the two-image questions
        store = ImageStore({k: v for k, v in images.items() if two or k == IMAGE_ID}, gallery=gallery,
                           analyses={k: v for k, v in analyses.items() if two or k == IMAGE_ID})
        tr = Trace(store, "", rng)
        try:
            turns = fn(tr, dict(ctx_base))
        except (KeyError, IndexError, TypeError) as e:  # a result shape a scenario did not expect: skip it
            turns = None
            _ = e
        if turns is None:
            continue
        labels = [estimate("identity", e["value"], IDENTITY_SOURCE, face_id=e["face_id"])
                  for e in tr.evidence if e["tool"] == "identify"]
        out.append(AgentDraft(category=name, turns=turns, labels=labels, evidence=tr.evidence,
                              images=[str(p) for p in images.values()] if two else [image_path]))
    return out


def tool_results(draft: AgentDraft) -> list[dict]:
    """The JSON results in a draft's tool turns (for checks and stats)."""
    from facellm.toolcall import parse_tool_responses

    return [r for t in draft.turns if t.from_ == "tool" for r in parse_tool_responses(t.value)]


# ------------------------------------------------------------------ second images for two-image questions

PARTNER_EVERY = 3  # one image in this many gets a two-image trace ("are both pictures of one person?")


def partner_pool(items: list, split_of: Callable) -> dict:
    """Single photos (no composites) by split, and by (split, identity) where the dataset has identities."""
    pool: dict = {}
    for it in items:
        if getattr(it, "build", None) is not None or "members" in it.meta:
            continue
        s = split_of(it)
        pool.setdefault(s, []).append(it)
        if it.meta.get("identity") is not None:
            pool.setdefault((s, it.meta["identity"]), []).append(it)
    return pool


def pick_partner(item, pool: dict, split: str, seed: int):
    """A second photo of the same split for ``item`` (same identity half the time where identities are
    known), or None for most items. Deterministic in (seed, item)."""
    from .sources import stable_hash

    if not pool or stable_hash(seed, "partner", item.key) % PARTNER_EVERY:
        return None
    h = stable_hash(seed, "partner-pick", item.key)
    ident = item.meta.get("identity")
    same = [c for c in pool.get((split, ident), []) if c.key != item.key] if ident is not None else []
    cands = same if same and h % 2 == 0 else [c for c in pool.get(split, []) if c.key != item.key]
    return cands[(h // 2) % len(cands)] if cands else None
