"""The offline teacher: a template engine with enough variety that answers are not one sentence repeated.

Each category has several question forms and an answer built from interchangeable clauses, openers,
synonyms and provenance phrases ("the expression model estimates ...", "annotated as ..."). Everything it
says comes from the ``Facts`` it is given; ``distinct_n`` measures the variety of what it wrote.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from .facts import Fact, Facts, gender_of

GENERATOR = "template-v1"
ORDINAL = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]


def pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def pct(p: float | None) -> str:
    return "" if p is None else f"{round(100 * p)}%"


def cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def join_clauses(parts: Iterable[str]) -> str:
    parts = [p.strip() for p in parts if p and p.strip()]
    return " ".join(cap(p) if p.endswith((".", "?", "!", ".)")) else cap(p) + "." for p in parts)


def with_opener(opener: str, text: str) -> str:
    """'From the face analysis, ' + 'The head ...' -> '... analysis, the head ...' (keeps 'I' and acronyms)."""
    if not opener or not text:
        return opener + text
    first = text.split(" ", 1)[0]
    if first != "I" and not first[1:2].isupper():
        text = text[:1].lower() + text[1:]
    return opener + text


def face_ref(rng: random.Random, face_id: int, n_faces: int, *, subject: bool = True) -> str:
    """How to point at a face: 'the person' alone, or by its place from the left."""
    if n_faces <= 1:
        return pick(rng, ["the person", "this person", "the subject", "the face"] if subject else
                    ["the face", "this face", "the person's face"])
    if face_id == 1:
        return pick(rng, ["the leftmost person", "the person on the far left", "face 1 (the leftmost)"])
    if face_id == n_faces:
        return pick(rng, ["the rightmost person", "the person on the far right", f"face {face_id} (the rightmost)"])
    o = ORDINAL[face_id - 1] if face_id <= len(ORDINAL) else f"{face_id}th"
    return pick(rng, [f"the {o} person from the left", f"face {face_id} ({o} from the left)",
                      f"the {o} face from the left"])


def est_phrase(rng: random.Random, fact: Fact, what: str) -> str:
    """A provenance phrase: human annotation vs model estimate."""
    if fact.kind == "human":
        return pick(rng, [f"annotated as {what}", f"{what}, according to the human label",
                          f"{what} (human annotation)"])
    if fact.kind == "transform":
        return pick(rng, [f"{what} (known from how the image was made)", f"{what}, by construction"])
    p = pct(fact.probability)
    conf = f" ({p} confidence)" if p else ""
    return pick(rng, [f"the model estimates {what}{conf}", f"{what} is the model's estimate{conf}",
                      f"an estimate of {what}{conf}"])


def age_text(rng: random.Random, fact: Fact) -> str:
    v = fact.value
    if isinstance(v, list):
        lo, hi = round(v[0]), round(v[1])
        if hi <= lo:
            return pick(rng, [f"about {years(lo)}", f"around {years(lo)}"])
        if hi >= 100:
            return pick(rng, [f"{lo} years or older", f"over {lo} years"])
        return pick(rng, [f"{lo}-{hi} years", f"between {lo} and {hi} years", f"{lo} to {hi} years"])
    n = round(float(v))
    return pick(rng, [f"about {years(n)}", f"around {years(n)}"])


def years(n: int) -> str:
    return "1 year" if n == 1 else f"{n} years"


def gender_text(rng: random.Random, fact: Fact, *, noun: bool | None = None) -> str:
    """'female' / 'a woman' (``noun`` True forces the noun, False the adjective)."""
    g = gender_of(fact.value) or str(fact.value)
    adj, nn = {"female": ("female", "a woman"), "male": ("male", "a man")}.get(g, (g, g))
    if noun is None:
        noun = rng.random() < 0.5
    return nn if noun else adj


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts (word level, lower-cased)."""
    total, seen = 0, set()
    for t in texts:
        words = t.lower().split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def exposure_words(x: float) -> str:
    if x < 0.25:
        return "very dark"
    if x < 0.4:
        return "rather dark"
    if x > 0.8:
        return "very bright"
    if x > 0.65:
        return "bright"
    return "evenly exposed"


def sharpness_words(x: float) -> str:
    return "sharp" if x >= 0.7 else ("slightly soft" if x >= 0.4 else "blurred")


class TemplateTeacher:
    """Writes the text of each item from its facts; also the fallback for the OpenAI-compatible teacher."""

    name = GENERATOR

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: Sequence[str]) -> str:
        return pick(self.rng, options)

    def opener(self) -> str:
        return self.pick(["", "", "", "Looking at the image, ", "From the face analysis, ", "Based on the measurements, ",
                          "In this photo, "])

    def face_ref(self, face_id: int, facts: Facts) -> str:
        n = facts.num_faces()
        return face_ref(self.rng, face_id, int(n.value) if n is not None else 1)
