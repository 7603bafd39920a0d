"""Reject answers that state an attribute the record does not hold.

``check(answer, labels)`` finds the attribute claims an answer makes (face counts, smiling, eyes closed,
mouth open, glasses, hats, facial hair, expression classes, gender words, race groups, ages, head
direction, names) with simple negation handling, and compares each with the record's labels (human,
transform or model). A claim passes when some label supports it; a claim about an attribute the record has
no label for fails: the generators (and the teacher) may only say what the record holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .facts import gender_of
from .schema import Label

_NUM = {"no": 0, "zero": 0, "one": 1, "a single": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5,
        "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "both": 2}
_NEG = re.compile(r"\b(not|no|n't|never|without|neither|nor|isn't|aren't|doesn't|don't|none)\b")
EXPRESSIONS = {"happy": "happy", "happiness": "happy", "sad": "sad", "sadness": "sad", "angry": "angry",
               "anger": "angry", "surprised": "surprise", "surprise": "surprise", "fear": "fear",
               "fearful": "fear", "afraid": "fear", "scared": "fear", "disgust": "disgust", "disgusted": "disgust",
               "neutral": "neutral", "contempt": "contempt", "contemptuous": "contempt"}
_EXPR_CANON = {"happiness": "happy", "sadness": "sad", "anger": "angry", "surprised": "surprise",
               "fearful": "fear", "disgusted": "disgust"}
RACES = {"white": "White", "black": "Black", "east asian": "East Asian", "southeast asian": "Southeast Asian",
         "indian": "Indian", "middle eastern": "Middle Eastern", "latino": "Latino_Hispanic",
         "hispanic": "Latino_Hispanic", "asian": "Asian"}
BOOL_ATTRS = {  # attribute -> (regex, label names that can support it)
    # "the smile cue scores 0.00" names a measurement, it claims nothing
    # "smile 0.99" is a measurement; "one eye closed" is not a claim about the eyes (a wink: left unsaid)
    "smile": (r"\bsmil(e|es|ing)\b(?!\s+(?:cue|score)|\s+\d)|\bgrin(s|ning)?\b|\blaugh(s|ing)?\b", ("smile",)),
    "eyes_closed": (r"(?<!one )\beyes? (are |is )?(closed|shut)\b(?!\s+score)|\bblink(s|ing)?\b", ("eyes_closed",)),
    "mouth_open": (r"\bmouth (is )?(open|opened)\b(?!\s+\d)|\bopen mouth\b|\bparted lips\b", ("mouth_open",)),
    "eyeglasses": (r"\b(eye)?glasses\b|\bspectacles\b|\bsunglasses\b", ("eyeglasses",)),
    "wearing_hat": (r"\bhat\b|\bcap\b|\bheadwear\b|\bbeanie\b", ("wearing_hat",)),
    "beard": (r"\bbeard(ed)?\b", ("beard",)),
    "mustache": (r"\bmoustache\b|\bmustache\b", ("mustache",)),
    "earrings": (r"\bearrings?\b", ("earrings",)),
    "bald": (r"\bbald\b", ("bald",)),
    "brow_raise": (r"\b(eye)?brows? (are |is )?raised\b|\braised (eye)?brows?\b", ("brow_raise",)),
}
_GENDER = re.compile(r"\b(woman|women|female|girl|lady|man|men|male|boy|gentleman|she|her|hers|he|him|his)\b", re.I)
_GENDER_MAP = {"woman": "female", "women": "female", "female": "female", "girl": "female", "lady": "female",
               "she": "female", "her": "female", "hers": "female", "man": "male", "men": "male", "male": "male",
               "boy": "male", "gentleman": "male", "he": "male", "him": "male", "his": "male"}


@dataclass
class Claim:
    attribute: str
    value: object
    sentence: str


@dataclass
class CheckResult:
    ok: bool
    claims: list[Claim]
    problems: list[str]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?;])\s+|\n+", text) if s.strip()]


_CLAUSE = re.compile(r"[,;:()]|\bbut\b|\bwhile\b|\band\b")
_NEG_AFTER = re.compile(r"^\W*(?:\w+\s+){0,2}?(?:is |are )?(?:inactive|not active|absent|not visible|not present)\b")
_HEDGE = re.compile(r"\b(whether|if|judge|tell|counts? as)\b")
# the name of a check ("expression check (no smile, mouth closed): fails") states a requirement, not the face
_CHECK_NAME = re.compile(r"\bcheck \([^)]*\)")


def _negated(sentence: str, start: int, end: int | None = None) -> bool:
    """A negation word shortly before the match, or 'inactive' / 'absent' right after it (same clause)."""
    window = _CLAUSE.split(sentence[max(0, start - 40):start].lower())[-1]
    if _NEG.search(window):
        return True
    return end is not None and bool(_NEG_AFTER.match(sentence[end:end + 30].lower()))


def _hedged(sentence: str, start: int) -> bool:
    """'whether anyone is smiling', 'can't tell if ...': no claim either way."""
    return bool(_HEDGE.search(_CLAUSE.split(sentence[max(0, start - 40):start].lower())[-1]))


def extract_claims(answer: str) -> list[Claim]:
    claims: list[Claim] = []
    for s in _sentences(_CHECK_NAME.sub("check", answer)):
        low = s.lower()
        for m in re.finditer(r"\b(no|zero|one|a single|single|two|three|four|five|six|seven|eight|nine|ten|\d+)\s+"
                             r"(?:\w+\s+){0,2}?(faces?|people|persons)\b(?!\s*\d)", low):
            word = m.group(1)
            n = int(word) if word.isdigit() else _NUM[word]
            claims.append(Claim("num_faces", n, s))
        for attr, (rx, _) in BOOL_ATTRS.items():
            for m in re.finditer(rx, low):
                if _hedged(low, m.start()):
                    continue
                answer = re.match(r"\s*:\s*(yes|no)\b", low[m.end():])  # "glasses: no"
                value = answer.group(1) == "yes" if answer else not _negated(low, m.start(), m.end())
                claims.append(Claim(attr, value, s))
        for m in re.finditer(r"\b(" + "|".join(EXPRESSIONS) + r")\b", low):
            # "not happy" says nothing positive; only affirmative expression words are checked
            if not _negated(low, m.start()):
                claims.append(Claim("expression", EXPRESSIONS[m.group(1)], s))
        for m in _GENDER.finditer(s):
            word = m.group(1).lower()
            if word in ("her", "his") and re.match(r"\b(her|his)\s+(own)\b", low[m.start():]):
                continue
            claims.append(Claim("gender", _GENDER_MAP[word], s))
        for m in re.finditer(r"\b(White|Black|East Asian|Southeast Asian|Indian|Middle Eastern|Latino|Hispanic|Asian)\b", s):
            if m.group(1) == "Asian" and re.search(r"(East|Southeast) Asian", s[max(0, m.start() - 10):m.end()]):
                continue
            claims.append(Claim("race", RACES[m.group(1).lower()], s))
        for m in re.finditer(r"\b(\d{1,3})\s*(?:-|–|to)\s*(\d{1,3})\s*(?:years|yrs|year)", low):
            claims.append(Claim("age", (float(m.group(1)), float(m.group(2))), s))
        for m in re.finditer(r"\b(?:about|around|roughly|approximately|aged?)\s+(\d{1,3})\b(?!\s*(?:%|px|degrees|faces|people))", low):
            claims.append(Claim("age", (float(m.group(1)), float(m.group(1))), s))
        for m in re.finditer(r"\b(\d{1,3})[- ]years?[- ]old\b", low):
            claims.append(Claim("age", (float(m.group(1)), float(m.group(1))), s))
        for m in re.finditer(r"\bturned (?:to|towards) (their|the subject's|his|her) (left|right)\b", low):
            claims.append(Claim("head_turn", m.group(2), s))
    return claims


def _truthy(v: object) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "yes", "1"):
        return True
    if isinstance(v, str) and v.lower() in ("false", "no", "0", "-1"):
        return False
    return None


def _age_ranges(labels: list[Label]) -> list[tuple[float, float]]:
    out = []
    for lb in labels:
        if lb.name in ("age", "perceived_age") and isinstance(lb.value, (int, float)):
            out.append((float(lb.value), float(lb.value)))
        elif lb.name in ("age_range", "apparent_age_range", "perceived_age_range") and isinstance(lb.value, list):
            out.append((float(lb.value[0]), float(lb.value[1])))
    return out


def check_claim(c: Claim, labels: list[Label], names: set[str] = frozenset()) -> str | None:
    """None if some label supports the claim, else the problem in words."""
    if c.attribute == "num_faces":
        counts = {lb.value for lb in labels if lb.name == "num_faces"}
        # "two faces" may count a subset ("two of the faces are smiling"): allow up to the largest count
        if c.value in counts or (counts and 0 < c.value <= max(v for v in counts if isinstance(v, int))
                                 and re.search(r"\bof (the|these|them)\b", c.sentence.lower())):
            return None
        return f"says {c.value} face(s); the record has {sorted(counts) or 'no count'}"
    if c.attribute in BOOL_ATTRS:
        vals = {_truthy(lb.value) for lb in labels if lb.name in BOOL_ATTRS[c.attribute][1]}
        if c.attribute == "smile":  # the expression class 'happy' also supports a smile
            vals |= {True for lb in labels if lb.name == "expression" and lb.value == "happy"}
        if c.value in vals:
            return None
        return f"says {c.attribute}={c.value}; the record has {sorted(map(str, vals)) or 'no such label'}"
    if c.attribute == "expression":
        vals = {_EXPR_CANON.get(str(lb.value).lower(), str(lb.value).lower()) for lb in labels
                if lb.name in ("expression", "top_expression")}
        if c.value == "happy" and any(lb.name == "smile" and _truthy(lb.value) for lb in labels):
            return None
        return None if c.value in vals else f"says the expression is {c.value}; the record has {sorted(vals) or 'none'}"
    if c.attribute == "gender":
        vals = {gender_of(lb.value) for lb in labels if lb.name in ("gender", "apparent_gender", "perceived_gender")}
        return None if c.value in vals else f"uses a {c.value} word; the record's gender labels are {sorted(v for v in vals if v) or 'none'}"
    if c.attribute == "race":
        # a dataset's race label only groups fairness reports: an answer never states a race group
        return f"names the race group {c.value}; answers never state race (FaceLLM does not estimate it)"
    if c.attribute == "age":
        lo, hi = c.value
        for a, b in _age_ranges(labels):
            if lo <= b + 3 and hi >= a - 3:
                return None
        return f"states an age of {lo:g}-{hi:g}; the record's ages are {_age_ranges(labels) or 'none'}"
    if c.attribute == "head_turn":
        dirs = " ".join(str(lb.value) for lb in labels if lb.name == "head_pose")
        return None if f"their {c.value}" in dirs else f"says the head is turned to their {c.value}; pose says {dirs or 'nothing'}"
    return None


def check(answer: str, labels: list[Label], *, known_names: set[str] = frozenset(),
          question: str = "") -> CheckResult:
    """Every claim in ``answer`` must be supported by ``labels``. A gallery name may appear only when a gallery
    match for it is among the labels, or when the question itself used it ("Is this X?" -> "not X")."""
    claims = extract_claims(answer)
    problems = [p for c in claims if (p := check_claim(c, labels)) is not None]
    matched = {str(lb.value) for lb in labels if lb.name == "identity"}
    for name in known_names:
        if name not in answer or name in matched:
            continue
        for sent in _sentences(answer):
            # an unmatched name the user asked about may only be denied ("rather than X", "does not match X")
            denied = name in question and re.search(r"\b(not|n't|rather than|no one|nor)\b", sent.lower())
            if name in sent and not denied:
                problems.append(f"names {name!r}, who the record does not identify")
                break
    return CheckResult(ok=not problems, claims=claims, problems=problems)
