"""The real benchmark's built-in categories, from the held-out photos of UTKFace, FER2013 and CelebA.

Every question asks for its answer in a short form ("Answer with a number.") except the open questions; the
references are the datasets' human labels (or, for composed images, what is known by construction). UTKFace's
race label only groups the fairness report: no question asks for it and no reference states it.

* age, age_group, gender: one stratified sample of held-out UTKFace photos (round robin over the annotated
  group x gender x age group cells, so every cell the data has gets items and the per-group gaps are measurable);
* expression: held-out FER2013 faces (its public test half), the same number per class (macro-F1 is meaningful);
* verification: two held-out CelebA photos' main faces side by side, same identity or not, balanced (the
  identities are disjoint from training);
* counting: 1-5 held-out faces composed side by side on a plain canvas;
* open_qa: describe the person (UTKFace: apparent age and gender; FER2013: expression), scored by rubric words;
* tool_calling: the face tools offered; the right first tool, valid arguments and an answer that agrees with
  what the tools returned.
"""

from __future__ import annotations

import json
from collections import defaultdict
from .answers import age_group_of
from .categories import BuildContext, category
from .items import EvalItem

WHO = "this person"
EXPRESSION_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
EXPRESSION_WORDS = {"angry": "angry|anger|annoyed|furious|mad", "disgust": "disgust|disgusted|revulsion",
                    "fear": "fear|fearful|afraid|scared|frightened", "happy": "happy|happiness|smiling|smile|joy|joyful",
                    "neutral": "neutral|calm|expressionless|blank", "sad": "sad|sadness|unhappy|upset|sorrow",
                    "surprise": "surprise|surprised|astonished|shocked"}
GENDER_WORDS = {"woman": "woman|female|lady|girl", "man": "man|male|gentleman|boy"}
QUESTIONS = {
    "age": f"How old does {WHO} look? Answer with a number.",
    "age_group": f"Which age group does {WHO} appear to belong to: child, teen, young adult, middle-aged or senior? "
                 "Answer with the group.",
    "gender": f"Does {WHO} appear to be a man or a woman? Answer with one word.",
    "expression": f"Which expression does {WHO} show? Answer with one word: angry, disgust, fear, happy, neutral, "
                  "sad or surprise.",
    "verification": "Are these two faces the same person? Answer yes or no.",
    "counting": "How many faces are in this image? Answer with a number.",
    "open_utk": "Describe the person in this photo: about how old do they look, and do they appear to be a man or "
                "a woman?",
    "open_fer": "Describe this person's facial expression and what it suggests about how they feel.",
}


# ------------------------------------------------------------------ helpers


def human_labels(item) -> list:
    """A single-face source item's human labels (data_gen anchors them to the main face: ``face_labels``)."""
    return [lb for lb in item.labels if lb.kind == "human"] + [lb for _, lb in item.face_labels if lb.kind == "human"]


def label_values(item) -> dict:
    return {lb.name: lb.value for lb in human_labels(item)}


def gender_word(value: object) -> str | None:
    return {"female": "woman", "male": "man", "woman": "woman", "man": "man"}.get(str(value).lower())


def utk_groups(labels: dict) -> dict[str, str]:
    """The annotated groups of a UTKFace face: perceived gender, age group, the dataset's race label (grouping
    only) and their intersection."""
    out: dict[str, str] = {}
    if (g := gender_word(labels.get("gender"))) is not None:
        out["gender"] = g
    if isinstance(labels.get("age"), (int, float)):
        out["age_group"] = age_group_of(float(labels["age"]))
    if labels.get("race"):
        out["race"] = str(labels["race"])
    if len(out) == 3:
        out["race×gender×age_group"] = f"{out['race']} / {out['gender']} / {out['age_group']}"
    return out


def main_face(fa) -> int | None:
    """The face a single-person photo's labels belong to: the largest (ties: closest to the centre)."""
    if fa is None or not fa.faces:
        return None
    cx, cy = fa.image.width / 2, fa.image.height / 2
    return max(fa.faces, key=lambda f: (round(f.box.area), -((f.box.center[0] - cx) ** 2 + (f.box.center[1] - cy) ** 2))).id


def _analysis_json(fa) -> dict | None:
    if fa is None:
        return None
    from facellm.data_gen.evidence import compact

    return json.loads(compact(fa).to_json())


def _evidence(item, face_id: int | None) -> list[dict]:
    """The item's human labels, about its main face (the race label stays out: it is for grouping only)."""
    return [lb.model_copy(update={"face_id": face_id}).model_dump() for lb in human_labels(item)
            if lb.name != "race"]


def _photo_item(ctx: BuildContext, src, **kw) -> EvalItem:
    path, fa = ctx.prepare(src)
    fid = main_face(fa)
    meta = {"source_key": src.key, "group": src.group, "padded": path != src.image_path, **kw.pop("meta", {})}
    return EvalItem(images=[path], dataset=src.source, evidence=_evidence(src, fid), analysis=_analysis_json(fa),
                    meta=meta, **kw)


def stratified(items: list, key, rng) -> list:
    """Round robin over the cells of ``key`` (each cell shuffled by ``rng``): every cell is represented."""
    cells: dict[object, list] = defaultdict(list)
    for it in items:
        cells[key(it)].append(it)
    order = sorted(cells, key=str)
    for c in order:
        rng.shuffle(cells[c])
    out, k = [], 0
    while any(cells[c] for c in order):
        for c in order:
            if cells[c]:
                out.append(cells[c].pop())
        k += 1
    return out


def utk_sample(ctx: BuildContext) -> list:
    """The held-out UTKFace photos in a stratified order (shared by the age, age-group and gender items)."""
    if "utk" not in ctx.memo:
        pool = [it for it in ctx.held_out.get("utkface", []) if isinstance(label_values(it).get("age"), int)]
        ctx.memo["utk"] = stratified(pool, lambda it: tuple(sorted(utk_groups(label_values(it)).items())[:3]),
                                     ctx.rng("utk-sample"))
    return ctx.memo["utk"]


def _age_keywords(age: float) -> str:
    nums = "|".join(str(a) for a in range(max(1, round(age) - 5), round(age) + 6))
    group = age_group_of(age)
    extra = {"young adult": "young adult|young", "middle-aged": "middle-aged|middle aged", "senior": "senior|elderly|older",
             "child": "child|kid|boy|girl|baby", "teen": "teen|teenager|adolescent"}[group]
    return f"{extra}|{nums}"


# ------------------------------------------------------------------ categories


@category("age", 350, "perceived age in years (UTKFace labels): MAE, and within 5 years")
def age_items(ctx: BuildContext) -> list[EvalItem]:
    out = []
    for src in utk_sample(ctx)[: ctx.cap("age")]:
        lab = label_values(src)
        out.append(_photo_item(ctx, src, id=f"age/{src.group}", kind="attribute", attribute="age",
                               reference=float(lab["age"]), question=QUESTIONS["age"], category="age",
                               sub_category="utkface", answer_form="number", groups=utk_groups(lab)))
    return out


@category("age_group", 350, "perceived age group (child, teen, young adult, middle-aged, senior)")
def age_group_items(ctx: BuildContext) -> list[EvalItem]:
    out = []
    for src in utk_sample(ctx)[: ctx.cap("age_group")]:
        lab = label_values(src)
        out.append(_photo_item(ctx, src, id=f"age_group/{src.group}", kind="attribute", attribute="age_group",
                               reference=age_group_of(float(lab["age"])), question=QUESTIONS["age_group"],
                               category="age_group", sub_category="utkface", answer_form="word",
                               groups=utk_groups(lab)))
    return out


@category("gender", 350, "perceived gender, man or woman (UTKFace labels)")
def gender_items(ctx: BuildContext) -> list[EvalItem]:
    out = []
    for src in utk_sample(ctx):
        if len(out) >= ctx.cap("gender"):
            break
        lab = label_values(src)
        if (g := gender_word(lab.get("gender"))) is None:
            continue
        out.append(_photo_item(ctx, src, id=f"gender/{src.group}", kind="attribute", attribute="gender", reference=g,
                               question=QUESTIONS["gender"], category="gender", sub_category="utkface",
                               answer_form="word", groups=utk_groups(lab)))
    return out


@category("expression", 350, "7-class facial expression (FER2013 public test half), the same number per class")
def expression_items(ctx: BuildContext) -> list[EvalItem]:
    pool = [it for it in ctx.held_out.get("fer2013", []) if label_values(it).get("expression") in EXPRESSION_CLASSES]
    out = []
    for src in stratified(pool, lambda it: label_values(it)["expression"], ctx.rng("fer-sample"))[: ctx.cap("expression")]:
        expr = label_values(src)["expression"]
        out.append(_photo_item(ctx, src, id=f"expression/{src.group}", kind="attribute", attribute="expression",
                               reference=expr, question=QUESTIONS["expression"], category="expression",
                               sub_category="fer2013", answer_form="word"))
    return out


def _pairs(ctx: BuildContext, n: int, purpose: str) -> list[tuple]:
    """Balanced same/different pairs of held-out CelebA photos (identities disjoint from training)."""
    by_id: dict[str, list] = defaultdict(list)
    for it in ctx.held_out.get("celeba", []):
        if it.meta.get("identity") is not None:
            by_id[str(it.meta["identity"])].append(it)
    ids = sorted(by_id)
    multi = [i for i in ids if len(by_id[i]) >= 2]
    if len(ids) < 2 or not multi:
        return []
    rng = ctx.rng(purpose)
    out, seen = [], set()
    for c in range(n * 4):
        if len(out) >= n:
            break
        same = len(out) % 2 == 0
        if same:
            a, b = rng.sample(by_id[rng.choice(multi)], 2)
        else:
            i, j = rng.sample(ids, 2)
            a, b = rng.choice(by_id[i]), rng.choice(by_id[j])
        key = tuple(sorted((a.key, b.key)))
        if key in seen:
            continue
        seen.add(key)
        out.append((a, b, same))
    return out


def _render_pair(ctx: BuildContext, a, b, name: str) -> str:
    from facellm.data_gen.composites import render_pair

    path = ctx.out / "images" / "pairs" / f"{name}.jpg"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        render_pair(a, b, ctx.memo["analysis_cache"], path)
    return str(path)


@category("verification", 150, "same person or not: two held-out CelebA photos side by side, balanced")
def verification_items(ctx: BuildContext) -> list[EvalItem]:
    out = []
    for k, (a, b, same) in enumerate(_pairs(ctx, ctx.cap("verification"), "pairs")):
        path = _render_pair(ctx, a, b, f"pair_{k:04d}")
        fa = ctx.analyse(path)
        out.append(EvalItem(
            id=f"verification/{k:04d}", kind="attribute", attribute="same_person", reference="yes" if same else "no",
            question=QUESTIONS["verification"], images=[path], category="verification", sub_category="celeba",
            dataset="celeba", answer_form="yes_no", analysis=_analysis_json(fa), reference_source="human",
            evidence=[{"name": "same_person", "value": same, "face_id": None, "source": "human", "kind": "human",
                       "probability": None}],
            meta={"members": [a.key, b.key], "identities": [a.meta.get("identity"), b.meta.get("identity")]}))
    return out


def _canvas(ctx: BuildContext, k: int, members: list, name: str) -> str:
    from facellm.data_gen.composites import render_canvas

    path = ctx.out / "images" / "canvases" / f"{name}.jpg"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        render_canvas(members, ctx.rng("canvas", name), path)
    return str(path)


@category("counting", 120, "how many faces: 1-5 held-out faces composed side by side")
def counting_items(ctx: BuildContext) -> list[EvalItem]:
    pool = sorted(ctx.held_out.get("utkface", []) + ctx.held_out.get("fer2013", []), key=lambda it: it.key)
    if not pool:
        return []
    rng = ctx.rng("counting")
    out = []
    for c in range(ctx.cap("counting")):
        n = 1 + c % 5
        members = rng.sample(pool, n)
        path = _canvas(ctx, n, members, f"count_{c:04d}")
        fa = ctx.analyse(path)
        out.append(EvalItem(
            id=f"counting/{c:04d}", kind="attribute", attribute="count", reference=n, question=QUESTIONS["counting"],
            images=[path], category="counting", sub_category=f"{n}_faces", dataset="composite",
            answer_form="number", analysis=_analysis_json(fa), reference_source="transform",
            evidence=[{"name": "num_faces", "value": n, "face_id": None, "source": "transform", "kind": "transform",
                       "probability": None}],
            meta={"members": [m.key for m in members]}))
    return out


@category("open_qa", 120, "open descriptions scored by rubric words (age and gender, or expression)")
def open_items(ctx: BuildContext) -> list[EvalItem]:
    n = ctx.cap("open_qa")
    utk = utk_sample(ctx)[::-1][: n // 2]  # the far end of the sample: mostly other photos than the attribute items
    fer = [it for it in ctx.held_out.get("fer2013", []) if label_values(it).get("expression") in EXPRESSION_CLASSES]
    fer = stratified(fer, lambda it: label_values(it)["expression"], ctx.rng("fer-open"))[: n - len(utk)]
    out = []
    for src in utk:
        lab = label_values(src)
        g, age = gender_word(lab.get("gender")), float(lab["age"])
        if g is None:
            continue
        ref = f"The person appears to be a {g} of about {round(age)} years ({age_group_of(age)})."
        out.append(_photo_item(ctx, src, id=f"open_qa/utk/{src.group}", kind="open", question=QUESTIONS["open_utk"],
                               reference=ref, keywords=[GENDER_WORDS[g], _age_keywords(age)], category="open_qa",
                               sub_category="age_gender", answer_form="free", groups=utk_groups(lab)))
    for src in fer:
        expr = label_values(src)["expression"]
        out.append(_photo_item(ctx, src, id=f"open_qa/fer/{src.group}", kind="open", question=QUESTIONS["open_fer"],
                               reference=f"The facial expression looks {expr}.", keywords=[EXPRESSION_WORDS[expr]],
                               category="open_qa", sub_category="expression", answer_form="free"))
    return out


TOOL_TASKS = (  # (sub-category, question, the tools that answer it first)
    ("age", "Estimate how old the person in this photo looks.", ["attributes", "analyze"]),
    ("expression", "What facial expression does the person in this photo show?", ["expression", "analyze", "cues"]),
    ("counting", "How many people are in this picture?", ["detect", "analyze"]),
    ("verification", "Are the two faces in this picture the same person?", ["verify"]),
)


@category("tool_calling", 120, "the face tools offered: right first tool, valid arguments, answer agrees with them")
def tool_items(ctx: BuildContext) -> list[EvalItem]:
    n = ctx.cap("tool_calling")
    per = max(1, n // len(TOOL_TASKS))
    utk = utk_sample(ctx)[len(utk_sample(ctx)) // 2:][:per]  # the sample's middle: other photos than most items
    fer = stratified([it for it in ctx.held_out.get("fer2013", []) if label_values(it).get("expression")],
                     lambda it: label_values(it)["expression"], ctx.rng("fer-tools"))[:per]
    out: list[EvalItem] = []
    for src in utk:
        lab = label_values(src)
        out.append(_photo_item(ctx, src, id=f"tool_calling/age/{src.group}", kind="tool", question=TOOL_TASKS[0][1],
                               expected_tools=TOOL_TASKS[0][2], reference=str(lab.get("age")), category="tool_calling",
                               sub_category="age", answer_form="free", groups=utk_groups(lab)))
    for src in fer:
        out.append(_photo_item(ctx, src, id=f"tool_calling/expression/{src.group}", kind="tool",
                               question=TOOL_TASKS[1][1], expected_tools=TOOL_TASKS[1][2],
                               reference=label_values(src)["expression"], category="tool_calling",
                               sub_category="expression", answer_form="free"))
    pool = sorted(ctx.held_out.get("utkface", []) + ctx.held_out.get("fer2013", []), key=lambda it: it.key)
    rng = ctx.rng("tool-counting")
    for c in range(per if pool else 0):
        k = 2 + c % 4
        members = rng.sample(pool, k)
        path = _canvas(ctx, k, members, f"tool_count_{c:04d}")
        out.append(EvalItem(id=f"tool_calling/counting/{c:04d}", kind="tool", question=TOOL_TASKS[2][1], images=[path],
                            expected_tools=TOOL_TASKS[2][2], reference=str(k), category="tool_calling",
                            sub_category="counting", dataset="composite", answer_form="free",
                            analysis=_analysis_json(ctx.analyse(path)), reference_source="transform",
                            evidence=[{"name": "num_faces", "value": k, "face_id": None, "source": "transform",
                                       "kind": "transform", "probability": None}]))
    for k, (a, b, same) in enumerate(_pairs(ctx, per, "tool-pairs")):
        path = _render_pair(ctx, a, b, f"tool_pair_{k:04d}")
        out.append(EvalItem(id=f"tool_calling/verification/{k:04d}", kind="tool", question=TOOL_TASKS[3][1],
                            images=[path], expected_tools=TOOL_TASKS[3][2], reference="yes" if same else "no",
                            category="tool_calling", sub_category="verification", dataset="celeba",
                            answer_form="free", analysis=_analysis_json(ctx.analyse(path)),
                            evidence=[{"name": "same_person", "value": same, "face_id": None, "source": "human",
                                       "kind": "human", "probability": None}]))
    return out

