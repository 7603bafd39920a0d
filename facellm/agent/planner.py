"""The deterministic "tools-first" planner: route a question to the right tools by rules, and phrase the
answer from their results by template.

Used when the model emits no valid tool call for a question that plainly needs one (count, smile, eyes,
pose, age, gender, quality, same person, who is this), so the agent answers correctly even with a small
model. Every sentence a template writes is built from a tool result and cites it as evidence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from facellm.tools.registry import age_range_words

from .evidence import Evidence
from .policy import IDENTITY_RX, asked_name, is_identity_question

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")

# intent -> the question patterns that need it (checked on the lower-cased question)
_INTENT_RX: dict[str, str] = {
    "count": r"\bhow many\b|\bcount\b|\bnumber of (faces|people|persons)\b",
    "smile": r"\bsmil|\bhappy\b|\blaugh|\bgrin|\bexpression\b|\bemotion|\bmood\b|\bfeeling\b",
    "eyes": r"\beyes? (are |is )?(closed|open|shut)\b|\bblink|\bclosed eyes\b",
    "pose": r"\bhead\b|\bpose\b|\bturned\b|\bfacing\b|\blooking (left|right|up|down|away|at)\b|\bwhich way\b|\btilt",
    "age": r"\bhow old\b|\bage\b|\baged?\b|\byoung|\belderly\b",
    "gender": r"\bgender\b|\bsex\b|\bmale\b|\bfemale\b|\bman or (a )?woman\b|\bwoman or (a )?man\b",
    "quality": r"\bquality\b|\bblur|\bsharp\b|\bgood enough\b|\busable\b",
    "describe": r"\bdescribe\b|\btell me about\b|\banaly[sz]e\b|\bwhat can you (tell|say)\b",
    "glasses": r"\b(eye)?glasses\b|\bspectacles\b|\bsunglasses\b|\bhat\b|\bbeard\b",
}
_SAME_PERSON_RX = r"\bsame (person|face|man|woman|individual)\b|\bmatch(es)?\b|\bverify\b|\bboth (photos|images)\b"


@dataclass
class Target:
    image: str
    face_id: int | None = None  # None: every face
    side: str | None = None  # "left" / "right": resolved after detect


@dataclass
class Intent:
    name: str
    target: Target
    other_image: str | None = None  # verify's second image
    asked_name: str | None = None  # "is this <name>?"
    other_face: int | None = None  # verify's face in the second image
    yes_no: bool = False  # "is this ...?": the answer starts with yes or no


@dataclass
class Plan:
    intents: list[Intent]
    calls: list[tuple[str, dict]] = field(default_factory=list)  # (tool, arguments) in order

    @property
    def needs_tools(self) -> bool:
        return bool(self.intents)


def _image_refs(q: str, image_ids: Sequence[str]) -> list[str]:
    """Images the question names: "image_2", "the first photo", "the last picture"."""
    out = [m for m in re.findall(r"\bimage_\d+\b", q) if m in image_ids]
    for i, word in enumerate(ORDINALS[: len(image_ids)]):
        if re.search(rf"\b{word} (photo|image|picture|one)\b", q):
            out.append(image_ids[i])
    if re.search(r"\b(last|latest|new|this) (photo|image|picture)\b", q) and image_ids:
        out.append(image_ids[-1])
    return list(dict.fromkeys(out))


_CORNER_RX = r"\b(?:at|in|on) the (top|upper|bottom|lower) (left|right)\b|\b(top|bottom)[- ](left|right)\b"


def _face_ref(q: str) -> tuple[int | None, str | None]:
    """The face a question singles out: (face_id, None), or (None, side) where side is "left", "right",
    "right-K" (K-th from the right: needs the count) or a registry ``position`` ("top right", "centre", ...)."""
    m = re.search(r"\bface (?:number |#)?(\d+)\b", q)
    if m:
        return int(m.group(1)), None
    m = re.search(r"\b(first|second|third|fourth|fifth|sixth)\s+(?:\w+\s+)?from the (left|right)\b", q)
    if m:
        k = ORDINALS.index(m.group(1)) + 1
        return (k, None) if m.group(2) == "left" else (None, "right" if k == 1 else f"right-{k}")
    m = re.search(_CORNER_RX, q)
    if m:
        v, h = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        return None, f"{'top' if v in ('top', 'upper') else 'bottom'} {h}"
    if re.search(r"\b(in the (centre|center|middle))\b", q):
        return None, "centre"
    if re.search(r"\b(on the (far )?left|leftmost|left-most|left side)\b", q):
        return None, "left"
    if re.search(r"\b(on the (far )?right|rightmost|right-most|right side)\b", q):
        return None, "right"
    return None, None


def route(question: str, image_ids: Sequence[str]) -> Plan:
    """The intents a question plainly asks for (empty: no rule applies)."""
    if not image_ids:
        return Plan([])
    q = question.lower()
    refs = _image_refs(q, image_ids)
    face_id, side = _face_ref(q)
    target = Target(refs[-1] if refs else image_ids[-1], face_id, side)
    intents: list[Intent] = []
    same = re.search(_SAME_PERSON_RX, q)
    enrolled = re.search(r"\benrolled\b|\bgallery\b|\bregistered\b|\bknown (person|people)\b", q)
    if same and not enrolled and len(image_ids) >= 2:
        if len(refs) >= 2:
            a, b = refs[0], refs[1]
        elif refs:  # "the same person as in the first photo?": that photo against the newest one
            a, b = refs[0], (image_ids[-1] if refs[0] != image_ids[-1] else image_ids[-2])
        else:
            a, b = image_ids[-2], image_ids[-1]
        return Plan([Intent("verify", Target(a), other_image=b)])
    if same and not enrolled and face_id is None:  # two faces of one image: "are faces 1 and 2 the same person?"
        ids = [int(x) for x in re.findall(r"\b(\d+)\b", q)][:2]
        if len(ids) == 2:
            return Plan([Intent("verify", Target(target.image, ids[0]), other_image=target.image,
                                other_face=ids[1])])
    for name, rx in _INTENT_RX.items():
        if re.search(rx, q):
            intents.append(Intent(name, target))
    if any(i.name == "describe" for i in intents):
        intents = [i for i in intents if i.name in ("describe", "count")]
    if is_identity_question(question) or (same and enrolled):
        identify = Intent("identify", target, asked_name=asked_name(question),
                          yes_no=bool(re.match(r"\s*(is|are|does|do|can)\b", q)))
        others = [i for i in intents if i.name not in ("describe", "count")]
        if not others and (face_id is not None or side is not None):
            # "who is on the left?": besides the gallery's answer, say what can be seen of that face, so the
            # answer is useful when nobody is enrolled
            others = [Intent("describe", target)]
        return Plan([identify, *others])
    return Plan(intents)


# ------------------------------------------------------------------ tool calls for a plan

_TOOL_OF = {"count": "detect", "smile": "expression", "eyes": "expression", "pose": "pose", "age": "attributes",
            "gender": "attributes", "quality": "quality", "describe": "analyze", "identify": "identify",
            "glasses": "parse"}


def tool_calls(intent: Intent, num_faces: int | None) -> list[tuple[str, dict]]:
    """The calls for one intent; ``num_faces`` (from detect) resolves "on the right"."""
    if intent.name == "verify":
        args = {"image_a": intent.target.image, "image_b": intent.other_image}
        if intent.target.face_id is not None:  # two faces of one image
            args.update(face_a=intent.target.face_id, face_b=intent.other_face)
        return [("verify", args)]
    args: dict = {"image": intent.target.image}
    fid = resolve_face(intent.target, num_faces)
    if fid is not None:
        args["face_id"] = fid
    elif intent.target.side and intent.target.side not in ("left", "right") and \
            not intent.target.side.startswith("right-"):
        args["position"] = intent.target.side  # "top right", "centre": the registry picks that face
    if intent.name == "identify" and intent.asked_name:
        args["top_k"] = 2
    return [(_TOOL_OF[intent.name], args)]


# what ``analyze`` measures in one call (it runs the per-face tools); identify / verify are separate
_ANALYZE_COVERS = {"detect", "expression", "pose", "attributes", "quality", "landmarks", "parse", "analyze"}
# a model that answers "is she looking at the camera?" with gaze, "who is oldest?" with rank or "passport
# photo?" with passport has measured what the question needs: its answer stands (no rule override)
_COMPOSITE_COVERS = {"gaze": {"pose", "expression", "detect"}, "rank": {"attributes", "expression", "detect"},
                     "passport": {"quality", "pose", "expression", "detect"}, "hair": {"parse", "detect"}}


def uncovered(plan: Plan, called: set[str]) -> set[str]:
    """The tools the plan needs that the model's successful calls do not measure."""
    need = {"verify" if i.name == "verify" else _TOOL_OF[i.name] for i in plan.intents}
    if "analyze" in called:
        called = called | _ANALYZE_COVERS
    for tool in list(called):  # the composite tools measure what the rules would have asked for
        called = called | _COMPOSITE_COVERS.get(tool, set())
    if called & _ANALYZE_COVERS:
        called = called | {"detect"}  # every per-face tool also returns the face count and positions
    return need - called - {"parse"}  # glasses: no tool measures them, any answer is the template's refusal


def resolve_face(target: Target, num_faces: int | None) -> int | None:
    if target.face_id is not None:
        return target.face_id
    if target.side == "left":
        return 1
    if target.side == "right" and num_faces:
        return num_faces
    if target.side and target.side.startswith("right-") and num_faces:
        k = int(target.side.split("-")[1])
        return num_faces - k + 1 if k <= num_faces else None
    return None


# ------------------------------------------------------------------ answer templates


@dataclass
class Phrase:
    text: str
    evidence: list[Evidence]


def _where(f: dict, n: int) -> str:
    if n <= 1:
        return "the person"
    return f"face {f['face_id']} ({f['position']})"


def _err(tool: str, result: dict) -> Phrase:
    return Phrase(f"I could not run the {tool} tool: {result['error'].rstrip('.')}.", [])


def _no_face(img: str, what: str) -> Phrase:
    return Phrase(f"I found no face in {img}, so I can't tell {what}.", [Evidence("detect", img, None, "num_faces", 0)])


def t_count(it: Intent, r: dict) -> Phrase:
    n = r["num_faces"]
    ev = [Evidence("detect", r["image"], None, "num_faces", n)]
    if n == 0:
        return Phrase(f"I found no faces in {r['image']} (face detector).", ev)
    if n == 1:
        return Phrase(f"There is one face in {r['image']} (face detector), {r['faces'][0]['position']} of the frame.", ev)
    pos = ", ".join(f"{f['face_id']} {f['position']}" for f in r["faces"])
    return Phrase(f"I count {n} faces in {r['image']} (face detector), numbered from left to right: {pos}.", ev)


def t_smile(it: Intent, r: dict) -> Phrase:
    faces, n = r["faces"], r["num_faces"]
    if not faces:
        return _no_face(r["image"], "whether anyone is smiling")
    ev = [Evidence("expression", r["image"], f["face_id"], "smile", f["cues"]["smile"]["active"],
                   f["cues"]["smile"]["score"]) for f in faces if "cues" in f]
    ev += [Evidence("expression", r["image"], f["face_id"], "expression", f["expression"]["value"],
                    f["expression"]["probability"]) for f in faces if "expression" in f]
    if len(faces) == 1:
        f = faces[0]
        yes = f["cues"]["smile"]["active"]
        who = _where(f, n).capitalize()
        e = f.get("expression", {})
        core = f"Yes, {who.lower() if n <= 1 else who} is smiling" if yes else \
            f"No, {who.lower() if n <= 1 else who} is not smiling"
        return Phrase(f"{core}: the smile cue scores {f['cues']['smile']['score']:.2f} and the expression model's "
                      f"top class is '{e.get('value')}' ({round(100 * e.get('probability', 0))}%). "
                      "These are model estimates.", ev)
    smiling = [f for f in faces if f["cues"]["smile"]["active"]]
    if not smiling:
        return Phrase(f"None of the {n} faces is smiling, according to the smile cue (a model estimate).", ev)
    names = "; ".join(f"face {f['face_id']} ({f['position']}, smile cue {f['cues']['smile']['score']:.2f})"
                      for f in smiling)
    lead = f"One of the {n} faces is smiling" if len(smiling) == 1 else f"{len(smiling)} of the {n} faces are smiling"
    rest = "" if len(smiling) == n else " The others show no smile cue."
    return Phrase(f"{lead}: {names}.{rest} These are model estimates.", ev)


def t_eyes(it: Intent, r: dict) -> Phrase:
    faces, n = r["faces"], r["num_faces"]
    if not faces:
        return _no_face(r["image"], "whether the eyes are open")
    parts, ev = [], []
    for f in faces:
        c = f["cues"]
        both = c["right_eye_closed"]["active"] and c["left_eye_closed"]["active"]
        one = c["right_eye_closed"]["active"] != c["left_eye_closed"]["active"]
        ev.append(Evidence("expression", r["image"], f["face_id"], "eyes_closed", both))
        state = "both eyes closed" if both else ("one eye closed" if one else "eyes open")
        parts.append(f"{_where(f, n)}: {state} (eye-closure scores {c['right_eye_closed']['score']:.2f} right, "
                     f"{c['left_eye_closed']['score']:.2f} left)")
    return Phrase("; ".join(parts).capitalize() + ". These are model estimates.", ev)


def t_pose(it: Intent, r: dict) -> Phrase:
    faces, n = r["faces"], r["num_faces"]
    if not faces:
        return _no_face(r["image"], "the head pose")
    parts, ev = [], []
    for f in faces:
        p = f["pose"]
        ev.append(Evidence("pose", r["image"], f["face_id"], "head_pose", p["direction"]))
        parts.append(f"{_where(f, n)} is {p['direction']} (yaw {p['yaw']:+.0f}°, pitch {p['pitch']:+.0f}°, "
                     f"roll {p['roll']:+.0f}°)")
    return Phrase("; ".join(parts)[0].upper() + "; ".join(parts)[1:] + ". Head pose is a model estimate.", ev)


def t_age(it: Intent, r: dict) -> Phrase:
    faces, n = r["faces"], r["num_faces"]
    if not faces:
        return _no_face(r["image"], "an age")
    parts, ev = [], []
    for f in faces:
        a = f.get("perceived_age")
        if a is None:
            continue
        ev += [Evidence("attributes", r["image"], f["face_id"], "perceived_age", a["value"]),
               Evidence("attributes", r["image"], f["face_id"], "perceived_age_range", a["range"], a["probability"])]
        lo, hi = a["range"]
        rng = age_range_words(lo, hi)
        span = f"likely range {rng}" if rng else "the model's likely range is within a year"
        parts.append(f"{_where(f, n)} appears to be about {a['value']} years old (perceived age, {span})")
    if not parts:
        return Phrase("The age model gave no estimate for these faces.", [])
    text = "; ".join(parts)
    return Phrase(text[0].upper() + text[1:] + ". This is a model estimate from appearance, not their actual age.", ev)


def t_gender(it: Intent, r: dict) -> Phrase:
    faces, n = r["faces"], r["num_faces"]
    if not faces:
        return _no_face(r["image"], "a perceived gender")
    parts, ev = [], []
    for f in faces:
        g = f.get("perceived_gender")
        if g is None:
            continue
        ev.append(Evidence("attributes", r["image"], f["face_id"], "perceived_gender", g["value"], g["probability"]))
        parts.append(f"{_where(f, n)} is perceived as {g['value']} by the model ({round(100 * g['probability'])}%)")
    if not parts:
        return Phrase("The gender model gave no estimate for these faces.", [])
    text = "; ".join(parts)
    return Phrase(text[0].upper() + text[1:] + ". This is an estimate from appearance, not the person's gender "
                  "identity.", ev)


def t_quality(it: Intent, r: dict) -> Phrase:
    faces, n = r["faces"], r["num_faces"]
    if not faces:
        return _no_face(r["image"], "the face quality")
    parts, ev = [], []
    for f in faces[:6]:
        q = f["quality"]
        ev.append(Evidence("quality", r["image"], f["face_id"], "quality_usable", q["usable"]))
        why = f" ({'; '.join(q['reasons'])})" if q["reasons"] else ""
        parts.append(f"{_where(f, n)}: {'usable' if q['usable'] else 'not usable'} for recognition, quality "
                     f"{q['score']:.2f}{why}")
    text = "; ".join(parts)
    return Phrase(text[0].upper() + text[1:] + ".", ev)


def t_describe(it: Intent, r: dict) -> Phrase:
    faces, n = r["faces"], r["num_faces"]
    if not faces:
        return _no_face(r["image"], "anything about a face")
    out, ev = [], []
    for f in faces[:6]:
        bits = []
        fid = f["face_id"]
        if "pose" in f:
            bits.append(f"head {f['pose']['direction']}")
            ev.append(Evidence("analyze", r["image"], fid, "head_pose", f["pose"]["direction"]))
        if "cues" in f:
            smile = f["cues"]["smile"]["active"]
            bits.append("smiling" if smile else "not smiling")
            ev.append(Evidence("analyze", r["image"], fid, "smile", smile, f["cues"]["smile"]["score"]))
        if "expression" in f:
            bits.append(f"expression '{f['expression']['value']}' ({round(100 * f['expression']['probability'])}%)")
            ev.append(Evidence("analyze", r["image"], fid, "expression", f["expression"]["value"],
                               f["expression"]["probability"]))
        if "perceived_age" in f:
            a = f["perceived_age"]
            rng = age_range_words(*a["range"])
            bits.append(f"perceived age about {a['value']}" + (f" (range {rng})" if rng else ""))
            ev.append(Evidence("analyze", r["image"], fid, "perceived_age_range", a["range"], a["probability"]))
        if "quality" in f:
            bits.append(f"image quality {f['quality']['score']:.2f}")
        out.append(f"{_where(f, n).capitalize()}: " + ", ".join(bits))
    head = "" if n <= 1 or len(faces) == 1 else f"{n} faces. "
    return Phrase(head + ". ".join(out) + ". All of these are model estimates.", ev)


def t_glasses(it: Intent, r: dict) -> Phrase:
    return Phrase("None of my tools measures glasses, hats or facial hair, so I can't say.", [])


def t_identify(it: Intent, r: dict) -> Phrase:
    faces, n = r["faces"], r["num_faces"]
    if not faces:
        return _no_face(r["image"], "who this is")
    parts, ev = [], []
    asked = it.asked_name
    for f in faces[:6]:
        ev.append(Evidence("identify", r["image"], f["face_id"], "identity", f["name"] if f["known"] else "unknown",
                           f["similarity"]))
        who = _where(f, n)
        if f["known"] and asked and f["name"].lower() != asked.lower():
            parts.append(f"{who} matches {f['name']} in the enrolled gallery rather than {asked} "
                         f"(similarity {f['similarity']:.2f})")
        elif f["known"]:
            yes = "Yes: " if it.yes_no and len(faces) == 1 else ""
            parts.append(f"{yes}{who} matches {f['name']}, who is enrolled in the gallery "
                         f"(similarity {f['similarity']:.2f}, within the threshold)")
        elif asked:
            parts.append(f"I can't confirm that {who} is {asked}: the face does not match anyone enrolled in the "
                         "gallery, and I only name people through a gallery match")
        else:
            best = f["matches"][0] if f.get("matches") else None
            # the nearest non-matching name is not said: naming it would be the guess the policy forbids
            near = f" (the closest enrolled person has similarity {best['similarity']:.2f}, below the " \
                   f"threshold)" if best else ""
            parts.append(f"{'No: ' if it.yes_no and len(faces) == 1 else ''}I can't say who {who} is: the face "
                         f"does not match anyone enrolled in the gallery{near}, and I only name people through a "
                         "gallery match")
    text = "; ".join(parts)
    return Phrase(text[0].upper() + text[1:] + ". Face matching is a model estimate.", ev)


def t_verify(it: Intent, r: dict) -> Phrase:
    a = f"face {r['face_a']} in {r['image_a']}"
    b = f"face {r['face_b']} in {r['image_b']}"
    ev = [Evidence("verify", r["image_a"], r["face_a"], "same_person_as",
                   {"image": r["image_b"], "face_id": r["face_b"], "same_person": r["same_person"],
                    "distance": r["distance"]}, r["similarity"])]
    verdict = "Yes, they appear to be the same person" if r["same_person"] else \
        "No, they do not appear to be the same person"
    return Phrase(f"{verdict}: {a} and {b} have a face-descriptor distance of {r['distance']:.2f} (threshold "
                  f"{r['threshold']:.2f}; lower means more alike). This is a face-recognition estimate.", ev)


TEMPLATES: dict[str, Callable[[Intent, dict], Phrase]] = {
    "count": t_count, "smile": t_smile, "eyes": t_eyes, "pose": t_pose, "age": t_age, "gender": t_gender,
    "quality": t_quality, "describe": t_describe, "glasses": t_glasses, "identify": t_identify, "verify": t_verify,
}


def phrase(intent: Intent, tool: str, result: dict) -> Phrase:
    if "error" in result and tool == "identify" and "gallery" in result["error"]:
        t = intent.target
        who = (f"face {t.face_id}" if t.face_id is not None else f"the person on the {t.side}" if t.side
               else "this")
        return Phrase(f"I can't tell who {who} is: no gallery of enrolled people is set up (enrol people with "
                      "`facellm gallery enroll NAME PHOTO`), and I only name people through a gallery match.", [])
    if "error" in result:
        return _err(tool, result)
    return TEMPLATES[intent.name](intent, result)


__all__ = ["Intent", "Phrase", "Plan", "Target", "phrase", "route", "tool_calls", "resolve_face", "uncovered",
           "IDENTITY_RX"]
