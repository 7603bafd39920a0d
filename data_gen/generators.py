"""Question-answer items in the FairFaceGPT, FaceInstruct and FaceCaption styles, from a record's facts.

A category function returns ``(question, answer)`` or ``None`` when the record holds nothing to say about
it (nothing is ever made up). Per-face questions point at a face by its place from the left when the image
shows several.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .facts import Fact, Facts
from .shortform import SHORTFORM, SHORTFORM_IMAGE
from .templates import (TemplateTeacher, age_text, cap, est_phrase, exposure_words, face_ref, gender_text,
                        join_clauses, pct, sharpness_words, with_opener)

QA = tuple[str, str]
# "looks surprise" -> "looks surprised"
EXPRESSION_ADJ = {"surprise": "surprised", "fear": "fearful", "disgust": "disgusted"}


@dataclass
class Draft:
    category: str
    question: str
    answer: str
    face_id: int | None = None


def _n_detected(f: Facts) -> int:
    n = f.get("num_faces", kind="model")
    return int(n.value) if n is not None else 0


def _ref(t: TemplateTeacher, f: Facts, face_id: int, subject: bool = True) -> str:
    return face_ref(t.rng, face_id, _n_detected(f), subject=subject)


def _is_true(fact: Fact | None) -> bool | None:
    if fact is None:
        return None
    v = fact.value
    return v if isinstance(v, bool) else None


# ------------------------------------------------------------------ FairFaceGPT categories


def ff_expression(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    e, s = f.get("expression", i), f.get("smile", i)
    if e is None and s is None:
        return None
    who = _ref(t, f, i)
    whose = _ref(t, f, i, subject=False)
    q = t.pick([f"What facial expression does {who} show?", f"How would you describe the expression of {who}?",
                f"What emotion can be read on {whose}?", f"Is {who} smiling?",
                f"Describe the mood visible on {whose}."])
    parts = []
    if e is not None:
        adj = EXPRESSION_ADJ.get(str(e.value), str(e.value))
        parts.append(t.pick([f"{who} looks {adj}: {est_phrase(t.rng, e, repr(e.value))}",
                             f"the expression reads as {e.value} ({est_phrase(t.rng, e, 'this class')})"]))
    if s is not None:
        if s.value:
            parts.append(t.pick([f"{who} is smiling", "there is a visible smile", "the mouth corners are raised in a smile"]))
        else:
            parts.append(t.pick([f"{who} is not smiling", "no smile is visible", "the mouth shows no smile"]))
        if s.kind == "model":
            parts[-1] += t.pick([" (geometric smile cue)", " according to the landmark cues", ""])
    mo = f.get("mouth_open", i)
    if mo is not None and t.rng.random() < 0.5:
        parts.append(t.pick(["the mouth is open", "the lips are parted"]) if mo.value else
                     t.pick(["the mouth is closed", "the lips are together"]))
    return q, with_opener(t.opener(), join_clauses(parts))


def ff_head_pose(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    p = f.get("head_pose", i)
    if p is None:
        return None
    who = _ref(t, f, i)
    q = t.pick([f"Which way is {who} facing?", f"Describe the head pose of {who}.", f"Is {who} looking at the camera head-on?",
                f"How is the head of {who} oriented?", f"Is the head of {who} turned or tilted?"])
    yaw, pitch, roll = f.get("yaw", i), f.get("pitch", i), f.get("roll", i)
    parts = [t.pick([f"the head is {p.value}", f"{who} is {p.value}", f"head pose: {p.value}"])]
    if yaw is not None and pitch is not None and roll is not None and p.kind == "model":
        parts.append(t.pick([f"estimated yaw {yaw.value:+.0f}°, pitch {pitch.value:+.0f}°, roll {roll.value:+.0f}°",
                             f"the pose model measures a yaw of {yaw.value:.0f} degrees and a roll of {roll.value:.0f} degrees"]))
    elif p.kind == "human":
        parts[0] += t.pick([" (human annotation)", ", according to the human label"])
    return q, with_opener(t.opener(), join_clauses(parts))


def ff_gaze(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    g = f.get("gaze", i)
    if g is None:
        return None
    who = _ref(t, f, i)
    q = t.pick([f"Where is {who} looking?", f"Describe the gaze direction of {who}.",
                f"Are the eyes of {who} directed where the head points?"])
    ec = f.get("eyes_closed", i)
    parts = [t.pick([f"the iris positions suggest {g.value}", f"gaze estimate: {g.value}", f"{g.value}, from the iris landmarks"])]
    if ec is not None and ec.value:
        parts.append("both eyes appear closed, so the gaze reading is unreliable")
    return q, join_clauses(parts)


def ff_skin_texture(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    sh, io = f.get("sharpness", i), f.get("inter_ocular_px", i)
    if sh is None or io is None:
        return None
    who = _ref(t, f, i, subject=False)
    q = t.pick([f"Can fine skin texture be seen on {who}?", f"Is the skin detail of {who} visible?",
                f"How much skin texture does the image show for {who}?"])
    if sh.value >= 0.7 and io.value >= 60:
        a = t.pick(["Yes: the face is sharp and large enough for fine skin detail to show",
                    "Fine detail is likely visible: the face region is sharp"])
    elif sh.value < 0.4:
        a = t.pick(["No: the face region is blurred, so skin texture cannot be judged",
                    "Hardly: blur hides fine skin detail here"])
    else:
        a = t.pick(["Only coarse detail: the face is small or not fully sharp",
                    "Some detail, but not enough to judge fine skin texture"])
    return q, f"{a} (sharpness {sh.value:.2f}, {io.value:.0f} px between the eyes)."


def ff_lighting(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    ex = f.get("exposure", i)
    if ex is None:
        return None
    who = _ref(t, f, i, subject=False)
    q = t.pick([f"How is {who} lit?", f"Describe the lighting on {who}.", f"Is {who} well exposed?",
                "What are the lighting conditions like?"])
    parts = [t.pick([f"{who} is {exposure_words(ex.value)}", f"the lighting on {who} is {exposure_words(ex.value)}"])
             + f" (mean face brightness {ex.value:.2f})"]
    lc = f.transform("lighting_change")
    if lc is not None:
        parts.append(t.pick([f"the image was {lc.value} after capture", f"its brightness was altered ({lc.value})"]))
    if f.transform("grayscale") is not None:
        parts.append("the picture has been converted to grayscale")
    return q, join_clauses(parts)


def ff_accessories(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    facts = {n: f.get(n, i, kind="human") for n in ("eyeglasses", "wearing_hat", "earrings", "headwear", "hair")}
    facts = {k: v for k, v in facts.items() if v is not None}
    if not ({"eyeglasses", "wearing_hat", "earrings"} & set(facts)):
        return None
    who = _ref(t, f, i)
    q = t.pick([f"Is {who} wearing any accessories?", f"Does {who} wear glasses or a hat?",
                f"What does {who} wear on the head or face?"])
    parts = []
    if "eyeglasses" in facts:
        parts.append(t.pick(["glasses: yes", f"{who} wears glasses"]) if facts["eyeglasses"].value else
                     t.pick(["no glasses", f"{who} wears no glasses"]))
    if "wearing_hat" in facts:
        hw = facts.get("headwear")
        parts.append((f"a {hw.value}" if hw else "a hat") + " is worn" if facts["wearing_hat"].value else "no hat")
    if "earrings" in facts:
        parts.append("earrings are visible" if facts["earrings"].value else "no earrings")
    return q, join_clauses(parts) + " " + t.pick(["(human annotation)", "These come from the human labels.", ""])


def ff_quality(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    u, sc = f.get("quality_usable", i), f.get("quality_score", i)
    if u is None or sc is None:
        return None
    who = _ref(t, f, i, subject=False)
    q = t.pick([f"Is {who} good enough for face recognition?", f"Rate the image quality of {who}.",
                f"Would {who} be usable for identity verification?"])
    parts = [t.pick([f"{'usable' if u.value else 'not usable'} for analysis, with a quality score of {sc.value:.2f}",
                     f"quality score {sc.value:.2f}: {'good enough' if u.value else 'not good enough'} for recognition"])]
    r = f.get("quality_reasons", i)
    if r is not None:
        parts.append(f"reason: {r.value}")
    sh = f.get("sharpness", i)
    if sh is not None:
        parts.append(f"the face looks {sharpness_words(sh.value)} (sharpness {sh.value:.2f})")
    return q, join_clauses(parts)


def ff_forensics(t: TemplateTeacher, f: Facts, i: int | None = None) -> QA | None:
    aug = f.transform("augmentation")
    if aug is None:
        return None
    q = t.pick(["Has this image been edited or processed?", "Are there signs of manipulation or compression?",
                "Is this an original photo or a processed copy?", "What processing has been applied to this image?"])
    parts = [t.pick([f"yes: it was processed ({aug.value})", f"it is a processed copy: {aug.value}"])]
    jq = f.transform("jpeg_quality")
    if jq is not None:
        parts.append(f"heavy JPEG compression (quality {jq.value}) leaves blocky artefacts")
    b = f.transform("blur_radius_px")
    if b is not None:
        parts.append(f"a Gaussian blur of {b.value} px softens the details")
    c = f.transform("composite_of")
    if c is not None:
        parts.append(f"it is a composite of {c.value} photos placed side by side, not a single scene")
    parts.append("these are known from how the image was made")
    return q, join_clauses(parts)


def ff_demographics(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    # a dataset's race label only groups fairness reports: no answer states it
    age, gender = f.concept("age", i), f.concept("gender", i)
    if age is None and gender is None:
        return None
    who = _ref(t, f, i)
    q = t.pick([f"How old does {who} appear to be?", f"What can be said about the perceived age and gender of {who}?",
                f"Give a careful demographic description of {who}.", f"Roughly what age does {who} look?"])
    parts = []
    if age is not None:
        parts.append(t.pick(["perceived age", "apparent age"]) + ": " + est_phrase(t.rng, age, age_text(t.rng, age)))
    if gender is not None:
        parts.append(t.pick(["perceived gender", "apparent gender"]) + ": " + est_phrase(t.rng, gender, gender_text(t.rng, gender)))
    parts.append(t.pick(["These are judgements from appearance, not facts about the person.",
                         "Appearance-based estimates like these can be wrong.",
                         "Such estimates describe appearance only and carry uncertainty."]))
    return q, join_clauses(parts)


def ff_counting(t: TemplateTeacher, f: Facts, i: int | None = None) -> QA | None:
    n = f.num_faces()
    if n is None:
        return None
    q = t.pick(["How many faces are in this image?", "How many people can be seen?", "Count the faces in the photo.",
                "How many faces does the picture contain?"])
    k = int(n.value)
    words = {0: "no faces", 1: "one face"}.get(k, f"{k} faces")
    verb = "is" if k == 1 else "are"
    a = t.pick([f"There {verb} {words}", f"The image contains {words}", f"I count {words}"])
    if n.kind == "model":
        a += t.pick([" (detector count)", ", according to the face detector", ""])
    a += "."
    m = f.get("num_faces", kind="model")
    if n.kind != "model" and m is not None and m.value != n.value:
        a += f" The detector reports {m.value}, which differs from the " + \
            ("annotation." if n.kind == "human" else "number of faces the image was composed of.")
    return q, a


FAIRFACEGPT: dict[str, Callable] = {
    "expression": ff_expression, "head_pose": ff_head_pose, "gaze": ff_gaze, "skin_texture": ff_skin_texture,
    "lighting": ff_lighting, "accessories": ff_accessories, "image_quality": ff_quality,
    "forensics": ff_forensics, "demographics": ff_demographics, "counting": ff_counting,
    # free-form answers to what users ask (data_gen/shortform.py)
    "age": SHORTFORM["age_free"], "race_refusal": SHORTFORM["race_refusal"],
    "label_vs_tool": SHORTFORM["label_vs_tool"], "verification": SHORTFORM_IMAGE["verification"],
}
IMAGE_LEVEL = {"forensics", "counting", "caption", *SHORTFORM_IMAGE}


# ------------------------------------------------------------------ FaceInstruct tasks


def fi_expression(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    e = f.get("expression", i)
    if e is None:
        return None
    who = _ref(t, f, i)
    q = t.pick([f"Task: expression recognition. Classify the facial expression of {who}. Options: neutral, happy, sad, "
                "surprise, fear, disgust, angry.",
                f"Recognise the expression of {who} (one of neutral, happy, sad, surprise, fear, disgust, angry) and explain."])
    why = []
    s, mo = f.get("smile", i), f.get("mouth_open", i)
    if s is not None:
        why.append("the smile cue is " + ("active" if s.value else "inactive"))
    if mo is not None:
        why.append("the mouth is " + ("open" if mo.value else "closed"))
    src = "annotated" if e.kind == "human" else f"model probability {pct(e.probability)}"
    return q, f"Answer: {e.value}.\nRationale: {e.value} ({src})" + ("; " + ", ".join(why) if why else "") + "."


def fi_action_units(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    cues = {n: f.get(n, i, kind="model") for n in ("smile", "mouth_open", "eyes_closed", "brow_raise")}
    if all(v is None for v in cues.values()):
        return None
    who = _ref(t, f, i)
    q = t.pick([f"Task: action-unit-like cues. Which facial muscle actions are active on {who}?",
                f"List the active facial action cues for {who} (lip corner puller, lips apart, eye closure, brow raiser)."])
    names = {"smile": "lip corner puller (AU12-like, smile)", "mouth_open": "lips apart / jaw drop (AU25/26-like)",
             "eyes_closed": "eye closure (AU43-like)", "brow_raise": "brow raiser (AU1+2-like)"}
    active = [names[k] for k, v in cues.items() if v is not None and v.value]
    inactive = [names[k].split(" (")[0] for k, v in cues.items() if v is not None and not v.value]
    ans = "Answer: " + (", ".join(active) if active else "none of the listed cues") + "."
    ans += "\nRationale: measured from landmark geometry"
    if inactive:
        ans += "; inactive: " + ", ".join(inactive)
    return q, ans + "."


def fi_attributes(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    attrs = {}
    for n in ("eyeglasses", "wearing_hat", "beard", "mustache", "earrings", "bald", "smile", "mouth_open", "eyes_closed"):
        fact = f.get(n, i)
        if fact is not None and isinstance(fact.value, bool):
            attrs[n] = fact
    if len(attrs) < 2:
        return None
    keys = t.rng.sample(sorted(attrs), min(len(attrs), t.rng.choice([2, 3, 4])))
    who = _ref(t, f, i)
    pretty = {"eyeglasses": "eyeglasses", "wearing_hat": "hat", "beard": "beard", "mustache": "mustache",
              "earrings": "earrings", "bald": "bald", "smile": "smiling", "mouth_open": "mouth open",
              "eyes_closed": "eyes closed"}
    q = f"Task: attribute detection. For {who}, answer yes or no for each: " + ", ".join(pretty[k] for k in keys) + "."
    lines = [f"{pretty[k]}: {'yes' if attrs[k].value else 'no'}" for k in keys]
    src = sorted({'human label' if attrs[k].kind == 'human' else 'landmark cue' for k in keys})
    return q, "Answer: " + "; ".join(lines) + f".\nRationale: from the {' and '.join(src)}s."


def fi_age(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    age = f.concept("age", i)
    if age is None:
        return None
    who = _ref(t, f, i)
    q = t.pick([f"Task: age estimation. Estimate the apparent age of {who}.", f"Estimate how old {who} looks, with a range."])
    if age.kind == "human":
        why = "the dataset's human label"
    else:
        p = f.get("perceived_age", i)
        why = f"the age model ({age.source})" + (f", point estimate {p.value:.0f}" if p is not None else "")
    return q, f"Answer: {age_text(t.rng, age)} (apparent age).\nRationale: from {why}; apparent age can differ from real age."


def fi_deepfake_quality(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    sc, u = f.get("quality_score", i), f.get("quality_usable", i)
    aug = f.transform("augmentation")
    if sc is None or u is None:
        return None
    q = t.pick(["Task: image forensics and quality. Is this face image pristine, and is it usable for analysis?",
                "Assess this face image for processing artefacts and overall quality."])
    verdict = "processed" if aug is not None else "no processing recorded"
    ans = f"Answer: {verdict}; {'usable' if u.value else 'not usable'} (quality {sc.value:.2f})."
    why = []
    if aug is not None:
        why.append(f"known edits: {aug.value}")
    r = f.get("quality_reasons", i)
    if r is not None:
        why.append(r.value)
    sh = f.get("sharpness", i)
    if sh is not None:
        why.append(f"sharpness {sh.value:.2f}")
    return q, ans + "\nRationale: " + "; ".join(why) + "."


FACEINSTRUCT: dict[str, Callable] = {
    "expression_recognition": fi_expression, "action_units": fi_action_units, "attribute_detection": fi_attributes,
    "age_estimation": fi_age, "deepfake_quality": fi_deepfake_quality,
    # answers in the asked form: a number, one word, yes/no (data_gen/shortform.py)
    "age_number": SHORTFORM["age_number"], "age_group": SHORTFORM["age_group"], "gender": SHORTFORM["gender"],
    "expression_word": SHORTFORM["expression_word"], "race_refusal": SHORTFORM["race_refusal"],
    **SHORTFORM_IMAGE,
}


# ------------------------------------------------------------------ FaceCaption


def caption(t: TemplateTeacher, f: Facts, i: int | None = None) -> QA | None:
    n = f.num_faces()
    ids = [k for k in f.face_ids if f.faces.get(k)]
    if n is None and not ids:
        return None
    q = t.pick(["Describe this image.", "Write a caption for this photo.", "Give a short description of the faces in this picture.",
                "Caption the image, focusing on the people.", "What does this photo show?"])
    parts = []
    k = int(n.value) if n is not None else len(ids)
    if k == 0:
        parts.append(t.pick(["no face is visible in this image", "the picture shows no faces"]))
        scene, colour = f.get("scene", kind="human"), f.get("colour", kind="human")
        if scene is not None:
            what = str(scene.value)
            if colour is not None:
                what = what.replace("a pleated", f"a {colour.value} pleated", 1)
            parts[-1] += t.pick([f"; it shows {what}", f": the image is {what}"])
    elif k == 1:
        parts.append(t.pick(["a single face fills the frame" if not f.transform("on_canvas") else "a single face is shown",
                             "a portrait of one person", "one person is visible"]))
    else:
        parts.append(t.pick([f"a photo of {k} people", f"{k} faces are visible", f"a group of {k} people"]))
    estimated: set[str] = set()  # which stated details are model estimates (said once, at the end)
    for fid in ids[:4]:
        bits = []
        who = _ref(t, f, fid)
        age, g = f.concept("age", fid), f.concept("gender", fid)
        if age is not None and g is not None and t.rng.random() < 0.7:
            bits.append(t.pick([f"appears {gender_text(t.rng, g, noun=False)}, aged {age_text(t.rng, age)}",
                                f"appears to be {gender_text(t.rng, g, noun=True)} of {age_text(t.rng, age)}"]))
            estimated |= {name for name, fact in (("age", age), ("gender", g)) if fact.is_estimate}
        e, s = f.get("expression", fid), f.get("smile", fid)
        if s is not None:
            bits.append("smiling" if s.value else t.pick(["not smiling", "with a straight face"]))
            if s.is_estimate:
                estimated.add("expression")
        elif e is not None:
            bits.append(f"looking {e.value}")
            if e.is_estimate:
                estimated.add("expression")
        p = f.get("head_pose", fid)
        if p is not None and t.rng.random() < 0.6:
            bits.append(p.value if p.value != "frontal" else t.pick(["facing the camera", "facing forward"]))
        for name, word in (("eyeglasses", "wearing glasses"), ("wearing_hat", "wearing a hat")):
            fact = f.get(name, fid, kind="human")
            if fact is not None and fact.value is True:
                bits.append(word)
        if bits:
            parts.append(f"{who}: " + ", ".join(bits))
    ex = [f.get("exposure", k) for k in ids]
    ex = [e for e in ex if e is not None]
    if ex and t.rng.random() < 0.5:
        parts.append(f"the lighting is {exposure_words(sum(e.value for e in ex) / len(ex))}")
    if f.transform("grayscale") is not None:
        parts.append("the image is in grayscale")
    if f.transform("composite_of") is not None:
        parts.append("it is a side-by-side composite of separate photos")
    if estimated:
        names = [n for n in ("age", "gender", "expression") if n in estimated]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        plural = len(names) > 1
        parts.append(t.pick([f"{listed} {'are model estimates' if plural else 'is a model estimate'} from appearance.",
                             f"({cap(listed)} {'are' if plural else 'is'} estimated by the face models, not known.)"]))
    return q, join_clauses(parts)


FACECAPTION: dict[str, Callable] = {"caption": caption}
STYLE_CATEGORIES = {"fairfacegpt": FAIRFACEGPT, "faceinstruct": FACEINSTRUCT, "facecaption": FACECAPTION}


def generate_style(style: str, facts: Facts, rng: random.Random, teacher: TemplateTeacher | None = None,
                   per_image: int = 4) -> list[Draft]:
    """Up to ``per_image`` drafts of one style for an image (distinct categories first, faces in turn)."""
    t = teacher or TemplateTeacher(rng)
    cats = STYLE_CATEGORIES[style]
    faces = [k for k in facts.face_ids if facts.faces.get(k)] or [None]
    names = list(cats)
    rng.shuffle(names)
    out: list[Draft] = []
    for rnd in range(3):  # a few passes so small images still give per_image items
        for name in names:
            if len(out) >= per_image:
                return out
            fid = None if name in IMAGE_LEVEL else faces[(rnd + len(out)) % len(faces)]
            if fid is None and name not in IMAGE_LEVEL:
                continue
            if rnd > 0 and name in IMAGE_LEVEL:
                continue
            qa = cats[name](t, facts, fid)
            if qa is not None:
                out.append(Draft(category=name, question=qa[0], answer=qa[1], face_id=fid))
    return out

