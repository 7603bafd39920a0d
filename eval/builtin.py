"""The built-in offline benchmark, built from the held-out (``test``) split of data_gen's records.

Held out means never trained on: only ``split == "test"`` records are used, and the build refuses records
whose split unit (``group``: the original photo or the identity) or image also appears in the training split,
so the benchmark is photo- and identity-disjoint from training.

From each held-out image's labels (human and transform labels only, by default: a model estimate as the
reference would reward agreeing with our own tools) come:

* multiple choice (FaceXBench categories): face count (face_localization / crowd_counting), smiling and
  glasses and hats (face_analysis / expression, attributes), perceived gender and age group
  (bias_fairness / gender, age);
* attribute questions: gender, age group, age (MAE against the annotated range), expression;

and from the records themselves:

* open questions (the record's question, its answer as the reference, attribute words as the rubric);
* tool-calling items (agent traces: the tools the trace called first are the right ones).

Every item carries the face's annotated groups (perceived gender, age group, race where labelled) for the
fairness breakdown, and the record's labels plus the tools' measurements as grounding evidence.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from facellm.data_gen.schema import Label, Record
from facellm.toolcall import parse_tool_calls

from .answers import AGE_GROUPS, age_group_of, canonical_expression, canonical_gender
from .items import LETTERS, Benchmark, BenchmarkError, EvalItem

REFERENCE_KINDS = ("human", "transform")
_GENDER_NAMES = ("gender", "apparent_gender", "perceived_gender")
_AGE_RANGE_NAMES = ("age_range", "apparent_age_range", "perceived_age_range")
_AGE_NAMES = ("age", "perceived_age")
_KEYWORD_VOCAB = re.compile(
    r"(?<![\w.])(smil\w*|happy|sad|neutral|angry|surprised?|fear\w*|disgust\w*|glasses|eyeglasses|sunglasses|hat|"
    r"cap|beard\w*|frontal|left|right|blurr?\w*|grayscale|mirrored|woman|man|female|male|closed|"
    r"one|two|three|four|five|six|seven|eight|\d+)(?![\w.%]|\s*(?:%|px))", re.I)
# rubric keywords accept their synonyms ("a|b": either counts)
_SYNONYMS = [("smile", "smile|smiles|smiling|grin"), ("woman", "woman|women|female|lady"),
             ("man", "man|men|male|gentleman"), ("glasses", "glasses|eyeglasses|spectacles|sunglasses"),
             ("hat", "hat|cap|headwear"), ("blur", "blur|blurred|blurry")]
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def rubric_keywords(reference: str, limit: int = 6) -> list[str]:
    """The words a good answer to this reference should contain, each with its synonyms."""
    out: list[str] = []
    for m in _KEYWORD_VOCAB.finditer(reference):
        w = m.group(1).lower()
        canon = {"female": "woman", "male": "man", "eyeglasses": "glasses", "sunglasses": "glasses", "cap": "hat",
                 "smiling": "smile", "smiles": "smile", "blurred": "blur", "blurry": "blur"}.get(w, w)
        alt = dict(_SYNONYMS).get(canon)
        if alt is None and canon.isdigit() and int(canon) < len(_NUMBERS):
            alt = f"{canon}|{_NUMBERS[int(canon)]}"
        elif alt is None and canon in _NUMBERS:
            alt = f"{canon}|{_NUMBERS.index(canon)}"
        out.append(alt or canon)
    return list(dict.fromkeys(out))[:limit]


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def _shuffled(correct: str, distractors: list[str], key: str, n: int = 4) -> tuple[list[str], str]:
    """Options in a fixed pseudo-random order (the same on every build) and the correct letter."""
    opts = [correct] + [d for d in dict.fromkeys(distractors) if d != correct][: n - 1]
    opts.sort(key=lambda o: _h(key, o))
    return opts, LETTERS[opts.index(correct)]


def _label_value(labels: list[Label], names: tuple[str, ...], face_id: int | None, kinds: tuple[str, ...]):
    for name in names:
        for lb in labels:
            if lb.name == name and lb.face_id == face_id and lb.kind in kinds:
                return lb
    return None


def _age_range(lb: Label | None) -> list[float] | None:
    if lb is None:
        return None
    if isinstance(lb.value, list) and len(lb.value) == 2:
        return [float(lb.value[0]), float(lb.value[1])]
    if isinstance(lb.value, (int, float)) and not isinstance(lb.value, bool):
        return [float(lb.value), float(lb.value)]
    return None


def face_groups(labels: list[Label], face_id: int | None, kinds: tuple[str, ...] = REFERENCE_KINDS) -> dict:
    """The face's demographic groups from annotated labels (never from model estimates)."""
    out: dict[str, str] = {}
    if (g := _label_value(labels, _GENDER_NAMES, face_id, kinds)) and (c := canonical_gender(g.value)):
        out["gender"] = c
    rng = _age_range(_label_value(labels, _AGE_RANGE_NAMES + _AGE_NAMES, face_id, kinds))
    if rng:
        out["age_group"] = age_group_of((rng[0] + rng[1]) / 2)
    if (r := _label_value(labels, ("race",), face_id, kinds)) is not None:
        out["race"] = str(r.value)
    return out


def _who(face_id: int | None, n_faces: int) -> str:
    return "the person" if face_id is None or n_faces <= 1 else f"face {face_id} (counting faces from the left)"


def _truth(v: object) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "yes", "false", "no"):
        return v.lower() in ("true", "yes")
    return None


class _Builder:
    def __init__(self, root: Path | None, kinds: tuple[str, ...]) -> None:
        self.root, self.kinds = root, kinds
        self.items: list[EvalItem] = []

    def image_path(self, rec: Record) -> str:
        p = Path(rec.image.path)
        if not p.is_absolute() and self.root is not None:
            p = self.root / p
        return str(p)

    def add(self, **kw) -> None:
        self.items.append(EvalItem(**kw))

    # -- per image: questions from the labels -----------------------------------------------------
    def image_items(self, rec: Record) -> None:
        labels, sha = rec.labels, rec.image.sha256[:16]
        evidence = [lb.model_dump() for lb in labels]
        analysis = rec.faces.model_dump(mode="json") if rec.faces is not None else None
        n_detected = rec.faces.num_faces if rec.faces is not None else 0
        common = dict(images=[self.image_path(rec)], dataset=rec.source, evidence=evidence, analysis=analysis,
                      meta={"record": rec.id, "group": rec.group})
        count = _label_value(labels, ("num_faces",), None, self.kinds)
        if count is not None and isinstance(count.value, int) and not isinstance(count.value, bool):
            n = count.value
            opts, letter = _shuffled(str(n), [str(n + 1), str(max(0, n - 1)), str(n + 2), str(n + 3)], sha + "count")
            main = max(rec.faces.faces, key=lambda f: f.box.area).id if n_detected else None
            self.add(id=f"{sha}/count", kind="mc", question="How many faces are in this image?", options=opts,
                     answer_letter=letter, category="face_localization", sub_category="crowd_counting",
                     groups=face_groups(labels, main, self.kinds) if n == 1 else {},
                     reference_source=count.source, **common)
        face_ids = sorted({lb.face_id for lb in labels if lb.face_id is not None and lb.kind in self.kinds})
        for fid in face_ids:
            self.face_items(rec, fid, sha, n_detected, common)

    def face_items(self, rec: Record, fid: int, sha: str, n_faces: int, common: dict) -> None:
        labels = rec.labels
        who = _who(fid, n_faces)
        groups = face_groups(labels, fid, self.kinds)
        base = dict(groups=groups, **common)
        for name, question, sub in (("smile", f"Is {who} smiling?", "expression"),
                                    ("eyeglasses", f"Is {who} wearing glasses?", "attributes"),
                                    ("wearing_hat", f"Is {who} wearing a hat or cap?", "attributes")):
            lb = _label_value(labels, (name,), fid, self.kinds)
            if lb is not None and (t := _truth(lb.value)) is not None:
                opts, letter = _shuffled("Yes" if t else "No", ["No" if t else "Yes"], f"{sha}{fid}{name}", 2)
                self.add(id=f"{sha}/f{fid}/{name}", kind="mc", question=question, options=opts, answer_letter=letter,
                         category="face_analysis", sub_category=sub, reference_source=lb.source, **base)
        g = _label_value(labels, _GENDER_NAMES, fid, self.kinds)
        if g is not None and (gender := canonical_gender(g.value)):
            opts, letter = _shuffled(gender, ["man" if gender == "woman" else "woman"], f"{sha}{fid}g", 2)
            self.add(id=f"{sha}/f{fid}/gender_mc", kind="mc", question=f"Does {who} appear to be a woman or a man?",
                     options=opts, answer_letter=letter, category="bias_fairness", sub_category="gender",
                     reference_source=g.source, **base)
            self.add(id=f"{sha}/f{fid}/gender", kind="attribute", attribute="gender", reference=gender,
                     question=f"Does {who} appear to be a woman or a man? Answer with one word.",
                     category="attributes", sub_category="gender", reference_source=g.source, **base)
        a = _label_value(labels, _AGE_RANGE_NAMES + _AGE_NAMES, fid, self.kinds)
        if (rng := _age_range(a)) is not None:
            group = age_group_of((rng[0] + rng[1]) / 2)
            others = sorted((x for x in AGE_GROUPS if x != group), key=lambda x: _h(sha, fid, x))
            opts, letter = _shuffled(group, others, f"{sha}{fid}ag")
            self.add(id=f"{sha}/f{fid}/age_group_mc", kind="mc", options=opts, answer_letter=letter,
                     question=f"Which age group does {who} appear to belong to?", category="bias_fairness",
                     sub_category="age", reference_source=a.source, **base)
            self.add(id=f"{sha}/f{fid}/age_group", kind="attribute", attribute="age_group", reference=group,
                     question=(f"Which age group does {who} appear to belong to: {', '.join(AGE_GROUPS)}? "
                               "Answer with the group only."),
                     category="attributes", sub_category="age_group", reference_source=a.source, **base)
            self.add(id=f"{sha}/f{fid}/age", kind="attribute", attribute="age", reference=rng,
                     question=f"About how old does {who} look? Answer with a number of years.",
                     category="attributes", sub_category="age", reference_source=a.source, **base)
        e = _label_value(labels, ("expression",), fid, self.kinds)
        if e is not None and (expr := canonical_expression(e.value)):
            self.add(id=f"{sha}/f{fid}/expression", kind="attribute", attribute="expression", reference=expr,
                     question=(f"What is the facial expression of {who}: neutral, happy, sad, surprise, fear, "
                               "disgust or angry? Answer with one word."),
                     category="attributes", sub_category="expression", reference_source=e.source, **base)

    # -- per record: its own question ----------------------------------------------------------------
    def record_item(self, rec: Record) -> None:
        questions = rec.questions()
        answers = rec.answers()
        if not questions or not answers:
            return
        main = max(rec.faces.faces, key=lambda f: f.box.area).id if rec.faces and rec.faces.faces else None
        common = dict(images=[self.image_path(rec)], dataset=rec.source,
                      evidence=[lb.model_dump() for lb in rec.labels],
                      analysis=rec.faces.model_dump(mode="json") if rec.faces is not None else None,
                      groups=face_groups(rec.labels, main, self.kinds) if rec.faces and rec.faces.num_faces == 1
                      else {}, meta={"record": rec.id, "group": rec.group, "style": rec.style})
        if rec.style == "agent":
            first_gpt = next(t for t in rec.conversations if t.from_ == "gpt")
            calls = parse_tool_calls(first_gpt.value).tool_calls
            if not calls:
                return
            self.add(id=f"rec/{rec.id}", kind="tool", question=questions[0], reference=answers[-1],
                     expected_tools=list(dict.fromkeys(c.name for c in calls)), category="tool_calling",
                     sub_category=rec.category, reference_source=rec.generator, **common)
            return
        reference = answers[0]
        keywords = rubric_keywords(reference)
        self.add(id=f"rec/{rec.id}", kind="open", question=questions[0], reference=reference, keywords=keywords,
                 category=f"open_{rec.style}", sub_category=rec.category, reference_source=rec.generator, **common)


def build_builtin(records: Iterable[Record], *, root: str | Path | None = None,
                  reference_kinds: tuple[str, ...] = REFERENCE_KINDS, name: str = "builtin") -> Benchmark:
    """The benchmark from the ``test`` records among ``records`` (pass every split: the others are used to
    check that the test split is photo- and identity-disjoint from training)."""
    test: list[Record] = []
    train_groups: set[str] = set()
    train_images: set[str] = set()
    for r in records:
        if r.split == "test":
            test.append(r)
        elif r.split == "train":
            train_groups.add(r.group)
            train_images.add(r.image.sha256)
    if not test:
        raise BenchmarkError("no held-out (split 'test') records: generate data with a held-out share first")
    leaks = sorted({r.group for r in test if r.group in train_groups} |
                   {r.image.path for r in test if r.image.sha256 in train_images})
    if leaks:
        raise BenchmarkError(f"{len(leaks)} held-out group(s)/image(s) also appear in the training split "
                             f"(e.g. {leaks[0]!r}): the benchmark would not be held out")
    b = _Builder(Path(root) if root else None, reference_kinds)
    seen: set[str] = set()
    for r in sorted(test, key=lambda r: r.id):
        if r.image.sha256 not in seen:
            seen.add(r.image.sha256)
            b.image_items(r)
        b.record_item(r)
    return Benchmark(name=name, items=b.items, source=str(root or ""))


def load_builtin(folder: str | Path) -> Benchmark:
    """The built-in benchmark from a data_gen output folder (its ``shards/part-*.jsonl``)."""
    from facellm.data_gen.pipeline import read_records

    folder = Path(folder)
    if not (folder / "shards").is_dir():
        raise BenchmarkError(f"{folder} is not a data_gen output folder (no shards/ inside)")
    bench = build_builtin(read_records(folder), root=folder, name=f"builtin:{folder.name}")
    bench.check_images()
    return bench
