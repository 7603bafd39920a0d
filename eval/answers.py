"""Reading answers out of model text, and scoring open answers.

``extract_choice`` finds the chosen option in the many ways models write it: "(B)", "B.", "B)", "Answer: b",
"the answer is B", "**B**", JSON ``{"answer": "B"}``, or the option's own text. ``extract_attribute`` reads an
expression class, a gender word, an age group or an age. ``rubric_score`` is the deterministic open-QA score
(keyword coverage plus agreement with the reference's attribute words); ``Judge`` asks a judge model behind any
OpenAI-compatible endpoint and falls back to the rubric when the endpoint fails or answers unreadably.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .items import LETTERS

# ------------------------------------------------------------------ multiple choice

_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.S)
_EXPLICIT = re.compile(r"(?:final\s+answer|answer|option|choice)\s*(?:is|would be|:|=|-)?\s*(?:option\s+)?"
                       r"[\(\[\*\"']*\s*([A-Za-z])(?![A-Za-z'])([\)\]\.\*\"':,]*)\s*(\S*)", re.I)
_BARE_PATTERNS = (  # in order: the whole line is a letter, a line starts with one, "(B)" anywhere, "B)" / "B."
    re.compile(r"^\s*[\(\[\*\"']*([A-Z])[\)\]\.:\*\"']*\s*$", re.M),
    re.compile(r"^\s*[\(\[\*]*([A-Z])\s*[\)\]\.:]", re.M),
    re.compile(r"[\(\[]([A-Z])[\)\]]"),
    re.compile(r"\b([A-Z])[\)\.:](?=\s|$)"),
)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s%+-]", " ", text.lower()).split())


def _json_answer(text: str) -> str | None:
    for m in _JSON_OBJ.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            for key in ("answer", "Answer", "option", "choice", "final_answer"):
                if isinstance(obj.get(key), (str, int)):
                    return str(obj[key])
    return None


def extract_choice(text: str | None, options: list[str]) -> str | None:
    """The option letter a reply chose, or None when it chose none (or several equally)."""
    if not text:
        return None
    valid = LETTERS[: len(options)]
    if (j := _json_answer(text)) is not None:
        if (inner := extract_choice(j, options)) is not None:
            return inner
    # chain-of-thought replies end with the answer: the last explicit "Answer: X" statement wins
    cleaned = re.sub(r"<think>.*?</think>", " ", text, flags=re.S)
    explicit = []
    for m in _EXPLICIT.finditer(cleaned):
        letter, punct, after = m.group(1), m.group(2), m.group(3)
        # "the answer is a woman": a lower-case letter followed by a word is an article, not an option
        if letter.islower() and not punct and after and after[0].isalpha():
            continue
        if letter.upper() in valid:
            explicit.append(letter.upper())
    if explicit:
        return explicit[-1]
    # a reply that only lists letters ("A, B, C, D") names no choice
    if re.fullmatch(r"[\s\(\)\[\],.;:/&*-]*(?:[A-Z](?:\s+(?:and|or)\s+|[\s\(\)\[\],.;:/&*-])*)+", cleaned) and \
            len(set(re.findall(r"\b[A-Z]\b", cleaned))) > 1:
        return None
    for pattern in _BARE_PATTERNS:
        found = {m.group(1) for m in pattern.finditer(cleaned)} & set(valid)
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            break  # several letters named: fall through to the option text
    # the option's text itself ("The person looks 30-39"): the longest option named, if only one matches
    norm = _norm(cleaned)
    hits = [(len(o), LETTERS[i]) for i, o in enumerate(options) if _norm(o) and
            re.search(r"(?<![\w-])" + re.escape(_norm(o)) + r"(?![\w-])", norm)]
    if hits:
        hits.sort(reverse=True)
        if len(hits) == 1 or hits[0][0] > hits[1][0]:
            return hits[0][1]
    # a lone lower-case letter reply ("b")
    if re.fullmatch(r"\s*[\(\[]?([a-z])[\)\]\.]?\s*", cleaned) and cleaned.strip("()[]. \n").upper() in valid:
        return cleaned.strip("()[]. \n").upper()
    return None


# ------------------------------------------------------------------ attributes

EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt")
_EXPRESSION_WORDS = {
    "neutral": "neutral", "calm": "neutral", "expressionless": "neutral", "happy": "happy", "happiness": "happy",
    "smiling": "happy", "joy": "happy", "joyful": "happy", "sad": "sad", "sadness": "sad", "unhappy": "sad",
    "surprise": "surprise", "surprised": "surprise", "fear": "fear", "fearful": "fear", "afraid": "fear",
    "scared": "fear", "disgust": "disgust", "disgusted": "disgust", "angry": "angry", "anger": "angry",
    "contempt": "contempt", "contemptuous": "contempt"}
_GENDER_WORDS = {"woman": "woman", "women": "woman", "female": "woman", "girl": "woman", "lady": "woman",
                 "man": "man", "men": "man", "male": "man", "boy": "man", "gentleman": "man"}
AGE_GROUPS = ("child", "teen", "young adult", "middle-aged", "senior")
_AGE_GROUP_BOUNDS = ((0, 12, "child"), (13, 19, "teen"), (20, 35, "young adult"), (36, 59, "middle-aged"),
                     (60, 200, "senior"))
_AGE_GROUP_WORDS = {"child": "child", "kid": "child", "baby": "child", "infant": "child", "toddler": "child",
                    "teen": "teen", "teenager": "teen", "adolescent": "teen", "young adult": "young adult",
                    "young": "young adult", "middle aged": "middle-aged", "middle-aged": "middle-aged",
                    "senior": "senior", "elderly": "senior", "old": "senior", "older adult": "senior"}


def age_group_of(age: float) -> str:
    for lo, hi, name in _AGE_GROUP_BOUNDS:
        if age < hi + 1:
            return name
    return "senior"


def canonical_gender(value: object) -> str | None:
    return _GENDER_WORDS.get(str(value).strip().lower()) if value is not None else None


def canonical_expression(value: object) -> str | None:
    return _EXPRESSION_WORDS.get(str(value).strip().lower()) if value is not None else None


def _first_word_match(text: str, table: dict[str, str]) -> str | None:
    """The first table word in the text that is not negated ("not happy" is no claim of happiness)."""
    low = text.lower()
    keys = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w-])")
    for m in pattern.finditer(low):
        before = low[max(0, m.start() - 12):m.start()]
        if re.search(r"\b(not|no|n't|never)\s+(a\s+|an\s+)?$", before):
            continue
        return table[m.group(1)]
    return None


def extract_age(text: str | None) -> float | None:
    """An age in years: "about 34", "30-39" (midpoint), "34 years old"."""
    if not text:
        return None
    low = text.lower()
    if m := re.search(r"\b(\d{1,3})\s*(?:-|–|to)\s*(\d{1,3})\b", low):
        a, b = float(m.group(1)), float(m.group(2))
        if a <= b <= 120:
            return (a + b) / 2
    if m := re.search(r"\b(\d{1,3})\s*\+", low):
        return float(m.group(1)) + 5
    for m in re.finditer(r"\b(\d{1,3}(?:\.\d)?)\b", low):
        v = float(m.group(1))
        if 0 <= v <= 120:
            return v
    return None


_YES_NO = {"yes": "yes", "no": "no", "same": "yes", "different": "no", "not the same": "no",
           "the same person": "yes", "different people": "no", "different persons": "no"}
_NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def extract_count(text: str | None) -> int | None:
    """A count of faces: the first number, in digits or as a word ("three")."""
    if not text:
        return None
    m = re.search(r"\b(\d{1,3})\b|\b(" + "|".join(_NUMBER_WORDS) + r")\b", text.lower())
    if m is None:
        return None
    return int(m.group(1)) if m.group(1) else _NUMBER_WORDS[m.group(2)]


def extract_yes_no(text: str | None) -> str | None:
    """"yes" / "no" from a reply (the first yes/no or same/different said without a negation before it)."""
    if not text:
        return None
    low = text.lower()
    if re.search(r"\bnot\s+the\s+same\b", low):
        return "no"
    return _first_word_match(low, _YES_NO)


# a reply in the asked form: the short answer alone (a closing period and "years" for an age are fine)
_FORM_PATTERNS = {
    "number": re.compile(r"(?:about |around |approximately |roughly )?\d{1,3}(?:\.\d+)?"
                         r"(?:\s*(?:years?(?: old)?|y|faces?|people|persons?))?\.?", re.I),
    "yes_no": re.compile(r"(?:yes|no)\.?", re.I),
    "letter": re.compile(r"[\(\[]?[A-Z](?:[\)\]\.:]+(?:\s+\S.{0,80})?)?", re.S),
    "word": re.compile(r"[A-Za-z][A-Za-z-]*(?:\s[A-Za-z][A-Za-z-]*)?\.?"),
}


def in_form(text: str | None, form: str | None) -> bool | None:
    """Whether a reply is in the form the question asked for (None: the question asked for no form)."""
    if form is None or form == "free":
        return None
    reply = (text or "").strip()
    if not reply:
        return False
    if form == "letter":  # "B", "(B)", "B. Yes" (the letter first, then at most the option's text)
        return bool(_FORM_PATTERNS["letter"].fullmatch(reply)) and len(reply.split()) <= 12
    return bool(_FORM_PATTERNS[form].fullmatch(reply))


def extract_attribute(text: str | None, attribute: str) -> str | float | None:
    if not text:
        return None
    if (j := _json_answer(text)) is not None:
        text = j
    if attribute == "count":
        return extract_count(text)
    if attribute == "same_person":
        return extract_yes_no(text)
    if attribute == "expression":
        return _first_word_match(text, _EXPRESSION_WORDS)
    if attribute == "gender":
        return _first_word_match(text, _GENDER_WORDS)
    if attribute == "age":
        return extract_age(text)
    if attribute == "age_group":
        word = _first_word_match(text, _AGE_GROUP_WORDS)
        if word is not None:
            return word
        age = extract_age(text)
        return age_group_of(age) if age is not None else None
    raise ValueError(f"unknown attribute {attribute!r}")


def age_error(predicted: float, reference: object) -> float:
    """Absolute error in years against an age or an age range (zero inside the range)."""
    if isinstance(reference, (list, tuple)) and len(reference) == 2:
        lo, hi = float(reference[0]), float(reference[1])
        return 0.0 if lo <= predicted <= hi else min(abs(predicted - lo), abs(predicted - hi))
    return abs(predicted - float(reference))


# ------------------------------------------------------------------ open QA


@dataclass
class OpenScore:
    score: float  # 0..1
    correct: bool
    method: str  # "rubric" or "judge:<model>"
    detail: str = ""


_STOP = set("a an the is are was were be been of in on at to and or with this that it its their there".split())


def _keyword_present(keyword: str, norm_answer: str) -> bool:
    alternatives = [k.strip() for k in keyword.split("|") if k.strip()]  # "smiling|smile|happy"
    return any(re.search(r"(?<!\w)" + re.escape(_norm(k)) + r"(?!\w)", norm_answer) for k in alternatives)


def rubric_score(answer: str | None, reference: str, keywords: list[str], *, threshold: float = 0.5) -> OpenScore:
    """Deterministic open-QA score: the share of rubric keywords the answer contains (each keyword may list
    alternatives as "a|b"), halved when the answer states an attribute value that the reference contradicts."""
    if not answer or not answer.strip():
        return OpenScore(0.0, False, "rubric", "empty answer")
    norm = _norm(answer)
    if keywords:
        hits = [k for k in keywords if _keyword_present(k, norm)]
        score = len(hits) / len(keywords)
        detail = f"{len(hits)}/{len(keywords)} keywords: " + ", ".join(hits)
    else:  # no rubric: content-word overlap with the reference
        ref = {w for w in _norm(reference).split() if w not in _STOP}
        got = {w for w in norm.split() if w not in _STOP}
        score = len(ref & got) / len(ref) if ref else 0.0
        detail = f"reference word overlap {score:.2f}"
    for attr, table in (("expression", _EXPRESSION_WORDS), ("gender", _GENDER_WORDS)):
        said, ref_value = _first_word_match(answer, table), _first_word_match(reference, table)
        if said and ref_value and said != ref_value:
            score /= 2
            detail += f"; says {attr} {said}, reference {ref_value}"
    return OpenScore(round(score, 4), score >= threshold, "rubric", detail)


JUDGE_PROMPT = """You grade answers about a face image. Compare the candidate answer with the reference answer.
Question: {question}
Reference answer: {reference}
Candidate answer: {answer}
Is the candidate answer correct and consistent with the reference (it may be phrased differently or add
harmless detail, but must not contradict it)? Reply with JSON only: {{"score": <0 to 10>, "reason": "<short>"}}"""


class Judge:
    """A judge model behind an OpenAI-compatible endpoint; the rubric whenever the judge cannot answer."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str = "EMPTY", timeout: float = 60.0,
                 threshold: float = 0.5, max_retries: int = 1) -> None:
        from .clients import make_client, resolve_model

        self.client = make_client(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.model = model or resolve_model(self.client)
        self.threshold = threshold
        self.name = f"judge:{self.model}"
        self.cache = None  # a ResponseCache: verdicts are kept, so a rerun of the report asks nothing again

    def score(self, question: str, answer: str | None, reference: str, keywords: list[str]) -> OpenScore:
        if not answer or not answer.strip():
            return OpenScore(0.0, False, self.name, "empty answer")
        key = None
        if self.cache is not None:
            import hashlib

            key = "judge:" + hashlib.sha256(json.dumps([self.name, question, answer, reference]).encode()).hexdigest()
            if (hit := self.cache.get(key)) is not None:
                return OpenScore(**hit)
        out = self._score(question, answer, reference, keywords)
        if key is not None and out.method == self.name:  # only real verdicts: a fallback is retried next time
            self.cache.put(key, self.name, "", "judge", out.__dict__)
        return out

    def _score(self, question: str, answer: str, reference: str, keywords: list[str]) -> OpenScore:
        try:
            reply = self.client.chat.completions.create(
                model=self.model, temperature=0.0, max_tokens=120,
                messages=[{"role": "user", "content": JUDGE_PROMPT.format(question=question, reference=reference,
                                                                          answer=answer)}])
            text = reply.choices[0].message.content or ""
        except Exception as e:  # any endpoint failure: the rubric still scores the item
            fb = rubric_score(answer, reference, keywords, threshold=self.threshold)
            return OpenScore(fb.score, fb.correct, "rubric", f"judge failed ({type(e).__name__}); {fb.detail}")
        value = _judge_value(text)
        if value is None:
            fb = rubric_score(answer, reference, keywords, threshold=self.threshold)
            return OpenScore(fb.score, fb.correct, "rubric", f"judge reply unreadable; {fb.detail}")
        return OpenScore(value, value >= self.threshold, self.name, text.strip()[:200])


def _judge_value(text: str) -> float | None:
    raw = _json_obj_value(text, "score")
    if raw is None and (m := re.search(r"\b(?:score|rating)\s*[:=]?\s*(\d+(?:\.\d+)?)", text, re.I)):
        raw = m.group(1)
    try:
        v = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    if v is None or v < 0:
        return None
    return min(1.0, v / 10.0 if v > 1.0 else v)


def _json_obj_value(text: str, key: str) -> object:
    for m in _JSON_OBJ.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and key in obj:
            return obj[key]
    return None
