"""The agent's policy on identity and demographics.

- Identity: people are named only through a gallery match (the ``identify`` tool against the enrolled
  ``facellm.tools.gallery.Gallery``). An answer to an identity question that names anyone the gallery did not
  match in this conversation is replaced by a refusal; the agent never guesses who someone is.
- Demographics: perceived age and gender are model estimates from appearance; an answer that states them
  without saying so gets a note that says it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

POLICY_PROMPT = ("Name a person only when the identify tool matched them in the enrolled gallery; otherwise say "
                 "you cannot tell who they are. Phrase age and gender as perceived estimates with their "
                 "uncertainty. Refer to images by their ids (image_1, image_2, ...) in tool calls.")

# "who is this", "what's her name", "recognise", "is this Ada Lovelace?"; not "who is smiling/facing ..."
# "who" followed within a few words by something the tools measure is a question about faces, not identity
# ("who looks the oldest?", "who has their eyes closed?", "who's got the biggest smile?")
IDENTITY_RX = (r"\bwho\b(?!\s+(is|are|'s)\s+(smiling|facing|looking|turned|happy|sad|oldest|youngest|older|younger|"
               r"closest|nearest|in focus|blurry|wearing))"
               r"(?!(?:'s)?(?:\s+[\w']+){0,3}?\s+(?:smil|look|appear|seem|old|young|eye|blink|happ|sad|angr|fac|turn|gaz|"
               r"camera|hair|grin|laugh|most|least|big|wide|frown|closed|open|tall))"
               r"|\bname\b|\brecogni[sz]|\bidentify\b|\bidentity\b|\benrolled\b|\bgallery\b")
# No tool estimates race or ethnicity, and the agent does not guess it (a dataset's race label only groups
# fairness reports).
RACE_RX = re.compile(r"\b(race|racial|ethnic|ethnicity|ancestry|skin (?:colou?r|tone))\b", re.I)
RACE_REFUSAL = ("I don't estimate race or ethnicity: no tool here measures it, and guessing it from a face is not "
                "something I do. I can tell you the perceived age, expression or head pose instead.")


def is_race_question(question: str) -> bool:
    return bool(RACE_RX.search(question))
_ASKED_NAME = re.compile(r"\b(?i:is (?:this|that|it|he|she|the person(?: on the \w+)?)|are you sure it's) "
                         r"((?:[A-Z][\w'-]+)(?: [A-Z][\w'-]+){0,3})\b")
_HEDGES = re.compile(r"\bperceiv|\bappear|\bestimat|\bseem|\blooks?\b|\blikely\b|\bprobab|\babout\b|\baround\b|"
                     r"\bapproximately\b|\buncertain", re.I)
_DEMOGRAPHIC = re.compile(r"\byears? old\b|\bage[ds]?\b|\bgender\b|\b(fe)?male\b|\bman\b|\bwoman\b", re.I)
DEMOGRAPHIC_NOTE = "(Age and gender are perceived from appearance by a model: estimates with uncertainty, not facts.)"


def is_identity_question(question: str) -> bool:
    return bool(re.search(IDENTITY_RX, question.lower())) or asked_name(question) is not None


def asked_name(question: str) -> str | None:
    """The name in "is this Ada Lovelace?" (capitalised words after "is this"), if any."""
    m = _ASKED_NAME.search(question)
    if not m:
        return None
    name = m.group(1)
    return None if name.split()[0].lower() in ("the", "a", "an", "same", "face", "image", "photo") else name


@dataclass
class PolicyOutcome:
    answer: str
    applied: list[str]  # which rules changed the answer, in words


def refusal(asked: str | None = None) -> str:
    who = f"whether this is {asked}" if asked else "who this is"
    return (f"I can't tell {who}: I only name people when the face matches someone enrolled in the gallery, "
            "and no enrolled person was matched.")


def _names_in(text: str, names: Iterable[str]) -> set[str]:
    return {n for n in names if n and re.search(rf"\b{re.escape(n)}\b", text, re.I)}


# Capitalised words that are not names: sentence words a face answer uses, and the app's own vocabulary.
_NOT_NAMES = frozenset("""
a an the this that these those it its he she his her hers they them their i i'm i've i'd i'll me my we our you your
yes no not none nobody someone somebody one two three four five six seven eight nine ten both each every all some
and or but so if when while where which who whose what why how there here then than also only just however although
is are was were be been am do does did can can't cannot could would should will won't may might must
in on at of to from by with without for about above below under over into onto near next left right centre center
middle top bottom front back upper lower first second third fourth fifth last other another
face faces image images photo photos picture pictures person people man woman men women boy girl child adult
perceived estimate estimates estimated age gender expression pose head eyes eye mouth smile smiling smiles
happy sad neutral angry surprised fear fearful disgust disgusted contempt calm
note notes answer question result results tool tools model gallery enrolled unknown match matched identity
sorry unfortunately okay ok sure well yes-no based according looking given overall
summary analysis details detail quality yaw pitch roll mp px
monday tuesday wednesday thursday friday saturday sunday
january february march april may june july august september october november december
""".split())
_ACRONYM = re.compile(r"^[A-Z0-9]{1,4}$")  # AI, RGB, JSON, EXIF, ID: not names (a longer capitalised word may be)
_WORD = re.compile(r"[A-Z][\w'’-]*")
_CUE = re.compile(r"(?i:\b(?:(?:full |real |first |last |sur|given )?names?\s*(?:is|are|was|:|=)|named|called|"
                  r"known as|identified as|resembles?|looks? like|(?:is|was|might be|could be|may be|must be|"
                  r"appears? to be|seems? to be|probably|likely)))\s+(?:(?:dr|mr|mrs|ms|prof|sir|admiral)\.?\s+)?"
                  r"([A-Z][\w'’-]*)")


def _starts_sentence(text: str, i: int) -> bool:
    """Whether the word at ``text[i]`` opens a sentence, a line, a list item or a quote (looks back a few
    characters only: this runs for every capitalised word of a streamed answer)."""
    j = i - 1
    while j >= 0 and text[j] in " \t":
        j -= 1
    if j < 0 or text[j] in '\n.!?:;"“(':
        return True
    if text[j] in "-*•" or (text[j] == ")" and j > 0 and text[j - 1].isdigit()):  # a list item's marker
        k = j - 1
        while k >= 0 and (text[k].isdigit() or text[k] in " \t"):
            k -= 1
        return k < 0 or text[k] == "\n"
    return False


def _name_like(word: str) -> bool:
    w = word.strip("'’-")
    return len(w) >= 2 and w.lower() not in _NOT_NAMES and not _ACRONYM.match(w) and not w.lower().startswith(
        ("image_", "face_"))


def names_claimed(text: str, allowed: Iterable[str] = ()) -> set[str]:
    """The person names ``text`` puts forward, by form alone (no list of people is needed):

    - a capitalised word after a naming cue ("her name is HOPPER", "named Grace", "this is Hopper", "looks like X");
    - a capitalised word inside a sentence (English capitalises little else mid-sentence: "shows Grace Hopper");
    - a run of two or more capitalised words anywhere ("Grace Hopper smiles").

    Common words of a face answer, acronyms of up to four letters and image/face ids are not names. Words of an
    ``allowed`` name (a gallery match) are fine. Errs towards finding names: a false find costs a refusal, a
    missed one would put a guessed identity in front of the user.
    """
    allowed_words = {w.lower() for n in allowed for w in re.findall(r"[\w'’-]+", n)}
    found: set[str] = set()
    for m in _CUE.finditer(text):
        if _name_like(m.group(1)):
            found.add(m.group(1))
    words = list(_WORD.finditer(text))
    for i, m in enumerate(words):
        w = m.group(0)
        if not _name_like(w):
            continue
        mid_sentence = not _starts_sentence(text, m.start())
        nxt = words[i + 1] if i + 1 < len(words) else None
        in_run = nxt is not None and text[m.end():nxt.start()].strip() == "" and _name_like(nxt.group(0))
        if mid_sentence or in_run:
            found.add(w)
    return {w for w in found if w.strip("'’-").lower() not in allowed_words}


def matched_in_tool_results(results: Iterable[str]) -> set[str]:
    """Names the gallery matched according to ``identify`` results (JSON texts of tool turns: faces with
    ``"known": true`` and a ``name``). For surfaces where the client runs the tools (chat completions)."""
    import json

    names: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("known") is True and isinstance(node.get("name"), str):
                names.add(node["name"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for text in results:
        try:
            walk(json.loads(text))
        except (TypeError, ValueError):
            continue
    return names


def apply(answer: str, question: str, *, matched: Iterable[str], gallery_names: Iterable[str] = (),
          template_answer: str | None = None) -> PolicyOutcome:
    """Enforce the policy on a final answer.

    matched: names the gallery matched in this conversation's identify results; gallery_names: everyone
    enrolled; template_answer: the rule-based answer for this question, used when the model's answer breaks
    the identity rule.
    """
    applied: list[str] = []
    if is_race_question(question) and not answer.startswith(RACE_REFUSAL):
        applied.append("race: not estimated")
        return PolicyOutcome(RACE_REFUSAL, applied)
    if template_answer is not None and answer == template_answer:  # built from the tool results: trusted
        return PolicyOutcome(answer, applied)
    answer = _identity(answer, question, set(matched), gallery_names, template_answer, applied)
    if _DEMOGRAPHIC.search(answer) and not _HEDGES.search(answer):
        answer = f"{answer.rstrip()} {DEMOGRAPHIC_NOTE}"
        applied.append("demographics: marked as perceived estimates")
    return PolicyOutcome(answer, applied)


def _identity(answer: str, question: str, matched: set[str], gallery_names: Iterable[str],
              template_answer: str | None, applied: list[str]) -> str:
    unmatched_names = _names_in(answer, set(gallery_names) - matched)
    if is_identity_question(question):
        asked = asked_name(question)
        # any name the gallery did not match counts as a guess (the asked name may be echoed in a refusal)
        guesses = names_claimed(answer, allowed=matched | ({asked} if asked else set()))
        if not matched and (unmatched_names - {asked} or guesses or not _refuses(answer)):
            applied.append("identity: no gallery match, so the answer may not name anyone")
            return template_answer or refusal(asked)
        if matched and (unmatched_names - {asked} or guesses or not _names_in(answer, matched)):
            applied.append("identity: the answer must name the gallery match and no one else")
            return template_answer or (refusal(asked) if guesses or unmatched_names - {asked} else answer)
    elif unmatched_names or names_claimed(answer, allowed=matched):
        applied.append("identity: named someone the gallery did not match")
        return template_answer or refusal()
    return answer


class AnswerScreen:
    """``apply`` for an answer that arrives in pieces (a token stream): text is released only once the policy
    has passed it, so a name never reaches the client, and then the user sees the refusal instead.

    An identity question's answer is held whole (it is short, and it must either name a gallery match or refuse);
    any other answer is released word by word, holding back the last, unfinished word and a capitalised word
    while the next one may continue it (a name's first part). ``feed`` returns what may be shown now, ``finish``
    the rest; ``text`` is everything released.
    """

    def __init__(self, question: str, *, matched: Iterable[str] = (), gallery_names: Iterable[str] = ()) -> None:
        self.question, self.matched, self.gallery_names = question, set(matched), list(gallery_names)
        self.identity = is_identity_question(question)
        self.hold_whole = self.identity or is_race_question(question)  # answers the policy may replace whole
        self.pending = ""
        self.text = ""
        self.replaced = False
        self.applied: list[str] = []

    def _passes(self, text: str) -> bool:  # (only for non-identity questions: those are held whole)
        return _identity(text, "", self.matched, self.gallery_names, None, []) == text

    def _refuse(self) -> str:
        self.replaced = True
        self.applied.append("identity: the answer named someone the gallery did not match")
        # what was released stays (it passed); the refusal follows as its own paragraph
        out = ("\n\n" if self.text.strip() else "") + refusal(asked_name(self.question) if self.identity else None)
        self.text += out
        return out

    def feed(self, piece: str) -> str:
        if self.replaced or not piece:
            return ""
        self.pending += piece
        if self.hold_whole:
            return ""
        cut = max(self.pending.rfind(" "), self.pending.rfind("\n"))
        if cut < 0:
            return ""
        head, following = self.pending[:cut], self.pending[cut:].strip()
        last = re.search(r"([\w'’-]+)\W*$", head)
        # a trailing capitalised word waits while the next word may be capitalised too (a name's second part)
        if last and last.group(1)[:1].isupper() and (not following or following[:1].isupper()):
            cut = last.start(1)
            head = self.pending[:cut]
        if not head:
            return ""
        # only the new text can add a name; the released text passed already (a little of it stays as context)
        context = self.text[-200:]
        if len(self.text) > 200:
            context = context[context.find(" ") + 1:]
        if not self._passes(context + head):
            self.pending = ""
            return self._refuse()
        self.text += head
        self.pending = self.pending[cut:]
        return head

    def finish(self, tool_calls: bool = False) -> str:
        """The rest of the answer, screened as a whole; the demographic note when it needs one. ``tool_calls``:
        the answer is a tool call (e.g. to identify), so its text need not refuse, only name no one."""
        if self.replaced:
            return ""
        rest, self.pending = self.pending, ""
        whole = self.text + rest
        if not whole.strip():
            return ""  # no text at all (a tool call, say): nothing to screen
        question = "" if tool_calls else self.question
        out = apply(whole, question, matched=self.matched, gallery_names=self.gallery_names)
        if not out.answer.startswith(self.text):  # what was released stays; the policy's answer follows it
            self.replaced = True
            self.applied += out.applied
            tail = ("\n\n" if self.text.strip() else "") + out.answer
            self.text += tail
            return tail
        self.applied += out.applied
        tail = out.answer[len(self.text):]
        self.text = out.answer
        return tail


def _refuses(answer: str) -> bool:
    return bool(re.search(r"\b(can't|cannot|can not|unable|won't|not able|don't know|no (enrolled|gallery|match)|"
                          r"does not match|doesn't match|unknown)\b", answer, re.I))
