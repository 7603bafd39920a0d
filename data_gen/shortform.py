"""Questions as users ask them, with answers in the asked form: a number, one word, yes/no, or a sentence.

"How old does this person look? Answer with a number." gets a number; "Which expression ...? One word." gets the
class word. Each category also has free-form variants. Human labels are preferred; a model estimate is stated
as an estimate (short forms only use it where a short answer is still honest: a number is what was asked).
Also here: questions that ask for race or ethnicity (answered: FaceLLM does not estimate it, then the rest of the
question), verification pairs, ordinal questions on composed images, and human-vs-tool disagreements.
"""

from __future__ import annotations

from .facts import Fact, Facts, gender_of
from .templates import ORDINAL, TemplateTeacher, face_ref, years

QA = tuple[str, str]
EXPRESSION_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# the benchmark's age groups (eval/answers.py), repeated here so data_gen does not import eval
AGE_GROUP_BOUNDS = ((12, "child"), (19, "teen"), (35, "young adult"), (59, "middle-aged"), (200, "senior"))
AGE_GROUP_TEXT = "child, teen, young adult, middle-aged or senior"
# race questions in about 1 in 25 answers of a style rather than 1 in 14: the refusal must be learned, not dominate
RACE_QUESTION_SKIP = 0.45
NO_RACE = ("FaceLLM does not estimate race or ethnicity from a face.",
           "I don't estimate race or ethnicity: it cannot be read reliably from appearance.",
           "Race and ethnicity are not something I estimate from a photo.")


def age_group_of(age: float) -> str:
    for hi, name in AGE_GROUP_BOUNDS:
        if age < hi + 1:
            return name
    return "senior"


def _n(f: Facts) -> int:
    n = f.get("num_faces", kind="model")
    return int(n.value) if n is not None else 0


def _who(t: TemplateTeacher, f: Facts, i: int, subject: bool = True) -> str:
    return face_ref(t.rng, i, _n(f), subject=subject)


def _age(f: Facts, i: int) -> tuple[float, Fact] | None:
    """A single age value: the human annotation, else the model's point estimate."""
    a = f.get("age", i, kind="human")
    if a is not None and isinstance(a.value, (int, float)):
        return float(a.value), a
    r = f.get("age_range", i, kind="human") or f.get("apparent_age_range", i, kind="human")
    if r is not None and isinstance(r.value, list):
        return (r.value[0] + min(r.value[1], 80)) / 2, r
    m = f.get("perceived_age", i, kind="model")
    if m is not None:
        return float(m.value), m
    return None


def _src(fact: Fact) -> str:
    return "annotated" if fact.kind == "human" else ("known by construction" if fact.kind == "transform" else
                                                       "model estimate")


def sf_age_number(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    got = _age(f, i)
    if got is None:
        return None
    age, fact = got
    who = _who(t, f, i)
    q = t.pick([f"How old does {who} look? Answer with a number.", f"Estimate the age of {who}. Reply with just a number.",
                f"What age would you guess for {who}? Give a number only.", f"Age of {who} in years? Number only.",
                f"How old is {who}? Answer with a single number."])
    return q, f"{round(age)}"


def sf_age_free(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    got = _age(f, i)
    if got is None:
        return None
    age, fact = got
    who = _who(t, f, i)
    q = t.pick([f"How old does {who} look?", f"Roughly how old is {who}?", f"What is the apparent age of {who}?"])
    group = age_group_of(age)
    if fact.kind == "human":
        a = t.pick([f"{who[:1].upper() + who[1:]} looks about {years(round(age))} old ({group}); this is the annotated "
                    "perceived age.", f"About {years(round(age))} old (age group: {group}), according to the human "
                    "label of perceived age."])
    else:
        a = t.pick([f"The age model estimates about {years(round(age))} ({group}). Apparent age from a photo is an "
                    "estimate and can be off by several years.",
                    f"Around {years(round(age))} old, by the age model's estimate ({group})."])
    return q, a


def sf_age_group(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    got = _age(f, i)
    if got is None:
        return None
    age, fact = got
    who = _who(t, f, i)
    group = age_group_of(age)
    if t.rng.random() < 0.6:
        q = t.pick([f"Which age group does {who} appear to belong to: {AGE_GROUP_TEXT}? Answer with the group.",
                    f"Age group of {who} ({AGE_GROUP_TEXT})? One answer only.",
                    f"Is {who} a child, teen, young adult, middle-aged or senior? Reply with the age group."])
        return q, group
    q = t.pick([f"What age group does {who} fall into?", f"Which age bracket does {who} look to be in?"])
    return q, f"{group[:1].upper() + group[1:]} (about {years(round(age))}, {_src(fact)})."


def sf_gender(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    g = f.concept("gender", i)
    if g is None or gender_of(g.value) is None:
        return None
    word = {"female": "woman", "male": "man"}[gender_of(g.value)]
    who = _who(t, f, i)
    if t.rng.random() < 0.55:
        q = t.pick([f"Does {who} appear to be a man or a woman? Answer with one word.",
                    f"Perceived gender of {who}: man or woman? One word.",
                    f"Man or woman? Answer in one word about {who}."])
        return q, word
    q = t.pick([f"What is the perceived gender of {who}?", f"Does {who} look male or female?",
                f"Would you say {who} is a man or a woman?"])
    if g.kind == "human":
        a = t.pick([f"{who[:1].upper() + who[1:]} appears to be a {word}, as the dataset's annotators perceived.",
                    f"Perceived gender: {word} (annotated from appearance)."])
    else:
        a = f"The gender model's estimate is {word} ({round(100 * (g.probability or 0))}% confidence); it judges appearance only."
    return q, a


def sf_expression(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    e = f.get("expression", i, kind="human") or f.get("expression", i, kind="model")
    if e is None or e.value not in EXPRESSION_CLASSES:
        return None
    if e.kind == "model" and (e.probability or 0) < 0.5:
        return None  # a short answer would state an uncertain class flatly
    who = _who(t, f, i, subject=False)
    if t.rng.random() < 0.6:
        q = t.pick([f"Which expression does {who} show? Answer with one word: angry, disgust, fear, happy, neutral, sad "
                    "or surprise.", f"Classify the facial expression of {who} ({', '.join(EXPRESSION_CLASSES)}). "
                    "One word.", f"What emotion is shown on {who}? Reply with one word."])
        return q, str(e.value)
    q = t.pick([f"What expression is on {who}?", f"How does {who} look emotionally?"])
    if e.kind == "human":
        return q, f"The expression is {e.value} (human annotation)."
    return q, f"The expression model reads {e.value} ({round(100 * (e.probability or 0))}% confidence)."


def sf_race_refusal(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    """A question asking for race or ethnicity: say it is not estimated, then answer the rest."""
    if t.rng.random() < RACE_QUESTION_SKIP:
        return None
    who = _who(t, f, i)
    rest = t.pick(["age", "gender", "expression", "none"])
    no = t.pick(list(NO_RACE))
    if rest == "age" and (got := _age(f, i)) is not None:
        q = t.pick([f"What race is {who}, and how old do they look?", f"Tell me the ethnicity and age of {who}.",
                    f"Estimate the race and age of {who}."])
        return q, f"{no} The perceived age is about {years(round(got[0]))} ({_src(got[1])})."
    g = f.concept("gender", i)
    if rest == "gender" and g is not None and gender_of(g.value) is not None:
        word = {"female": "woman", "male": "man"}[gender_of(g.value)]
        q = t.pick([f"What is the ethnicity and gender of {who}?", f"Describe the race and gender of {who}."])
        return q, f"{no} {who[:1].upper() + who[1:]} appears to be a {word} ({_src(g)})."
    e = f.get("expression", i, kind="human") or f.get("expression", i, kind="model")
    if rest == "expression" and e is not None and e.value in EXPRESSION_CLASSES:
        q = t.pick([f"What race is {who} and what is their expression?", f"Ethnicity and mood of {who}?"])
        return q, f"{no} The expression reads as {e.value} ({_src(e)})."
    q = t.pick([f"What race is {who}?", f"What is the ethnicity of {who}?", f"Which race does {who} belong to?",
                f"Guess the ethnic background of {who}."])
    return q, no + t.pick([" I can describe perceived age, expression, head pose or image quality instead.",
                           " I can tell you about the face's apparent age, expression and pose.", ""])


def sf_disagreement(t: TemplateTeacher, f: Facts, i: int) -> QA | None:
    """Where a human label and a tool disagree, say both, each with its provenance."""
    h, m = f.get("expression", i, kind="human"), f.get("expression", i, kind="model")
    who = _who(t, f, i, subject=False)
    if h is not None and m is not None and h.value != m.value:
        q = t.pick([f"Do the annotation and the expression model agree on {who}?",
                    f"What expression does {who} show, and is that certain?"])
        return q, (f"They differ: the human annotation says {h.value}, while the expression model reads {m.value} "
                   f"({round(100 * (m.probability or 0))}% confidence). Expression labels can be ambiguous.")
    ha, ma = f.get("age", i, kind="human"), f.get("perceived_age", i, kind="model")
    if ha is not None and ma is not None and abs(float(ha.value) - float(ma.value)) >= 10:
        q = t.pick([f"How old does {who} look, and how sure is that?", f"Do the label and the age model agree on {who}?"])
        return q, (f"Not closely: the annotated perceived age is {ha.value} years, while the age model estimates "
                   f"about {round(float(ma.value))} years. Apparent age is uncertain.")
    hg, mg = f.get("gender", i, kind="human"), f.get("perceived_gender", i, kind="model")
    if hg is not None and mg is not None and gender_of(hg.value) != gender_of(mg.value) and gender_of(mg.value):
        w = {"female": "woman", "male": "man"}
        q = f"Do the label and the gender model agree on {who}?"
        return q, (f"No: the annotators perceived a {w[gender_of(hg.value)]}, while the gender model estimates a "
                   f"{w[gender_of(mg.value)]} ({round(100 * (mg.probability or 0))}%). Both judge appearance only.")
    return None


def sf_verification(t: TemplateTeacher, f: Facts, i: int | None = None) -> QA | None:
    s = f.get("same_person", kind="human")
    if s is None:
        return None
    if t.rng.random() < 0.6:
        q = t.pick(["Are these two faces the same person? Answer yes or no.", "Same person or not? Reply yes or no.",
                    "Do the left and right photos show the same person? Yes or no."])
        return q, "yes" if s.value else "no"
    q = t.pick(["Do these two photos show the same person?", "Is the person on the left the same as the one on the right?",
                "Compare the two faces: one person or two different people?"])
    if s.value:
        return q, "Yes: the two faces belong to the same person, according to the dataset's identity labels."
    return q, "No: the two faces belong to different people, according to the dataset's identity labels."


def _ordinal(k: int, n: int) -> str:
    return ORDINAL[k - 1] if k <= len(ORDINAL) else f"{k}th"


def sf_ordinal(t: TemplateTeacher, f: Facts, i: int | None = None) -> QA | None:
    """Composed images: a face picked by its place from the left (only when every composed face was detected, so
    face ids are the left-to-right order)."""
    n_made, n_seen = f.get("num_faces", kind="transform"), f.get("num_faces", kind="model")
    if n_made is None or n_seen is None or n_made.value != n_seen.value or int(n_made.value) < 2:
        return None
    n = int(n_made.value)
    k = t.rng.randint(1, n)
    place = (t.pick(["the person on the left", "the leftmost face"]) if k == 1 else
             t.pick(["the person on the right", "the rightmost face"]) if k == n else
             f"the {_ordinal(k, n)} face from the left")
    if n == 2 and k == 1:
        place = t.pick(["the person on the left", "the left face"])
    kind = t.pick(["age", "gender", "expression"])
    if kind == "age" and (got := _age(f, k)) is not None:
        return f"How old does {place} look? Answer with a number.", f"{round(got[0])}"
    g = f.concept("gender", k)
    if kind == "gender" and g is not None and gender_of(g.value):
        return (f"Is {place} a man or a woman? One word.", {"female": "woman", "male": "man"}[gender_of(g.value)])
    e = f.get("expression", k, kind="human")
    if e is not None and e.value in EXPRESSION_CLASSES:
        return (f"What expression does {place} show? One word.", str(e.value))
    if (got := _age(f, k)) is not None:
        return f"What is the apparent age of {place}? A number, please.", f"{round(got[0])}"
    return None


def sf_count(t: TemplateTeacher, f: Facts, i: int | None = None) -> QA | None:
    n = f.get("num_faces", kind="transform") or f.get("num_faces", kind="human")
    if n is None:
        return None
    q = t.pick(["How many faces are in this image? Answer with a number.", "How many people are there? Number only.",
                "Count the faces. Reply with a number."])
    return q, str(int(n.value))


SHORTFORM = {"age_number": sf_age_number, "age_free": sf_age_free, "age_group": sf_age_group, "gender": sf_gender,
             "expression_word": sf_expression, "race_refusal": sf_race_refusal, "label_vs_tool": sf_disagreement}
SHORTFORM_IMAGE = {"verification": sf_verification, "ordinal": sf_ordinal, "count_number": sf_count}
