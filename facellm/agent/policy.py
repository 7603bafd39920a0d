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
IDENTITY_RX = (r"\bwho\b(?!\s+(is|are|'s)\s+(smiling|facing|looking|turned|happy|sad|oldest|youngest|older|younger|"
               r"closest|nearest|in focus|blurry|wearing))|\bname\b|\brecogni[sz]|\bidentify\b|\bidentity\b|"
               r"\benrolled\b|\bgallery\b")
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


def apply(answer: str, question: str, *, matched: Iterable[str], gallery_names: Iterable[str] = (),
          template_answer: str | None = None) -> PolicyOutcome:
    """Enforce the policy on a final answer.

    matched: names the gallery matched in this conversation's identify results; gallery_names: everyone
    enrolled; template_answer: the rule-based answer for this question, used when the model's answer breaks
    the identity rule.
    """
    applied: list[str] = []
    matched = set(matched)
    if template_answer is not None and answer == template_answer:  # built from the tool results: trusted
        return PolicyOutcome(answer, applied)
    unmatched_names = _names_in(answer, set(gallery_names) - matched)
    if is_identity_question(question):
        asked = asked_name(question)
        # any capitalised name in the answer that the gallery did not match counts as a guess
        guesses = {m for m in re.findall(r"\b[A-Z][a-z'-]+(?: [A-Z][a-z'-]+)+\b", answer)
                   if not _names_in(m, matched) and m != asked and not m.startswith(("I ", "The ", "Face "))}
        if not matched and (unmatched_names - {asked} or guesses or not _refuses(answer)):
            answer = template_answer or refusal(asked)
            applied.append("identity: no gallery match, so the answer may not name anyone")
        elif matched and (unmatched_names - {asked} or not _names_in(answer, matched)):
            answer = template_answer or answer
            applied.append("identity: the answer must name the gallery match and no one else")
    elif unmatched_names:
        answer = template_answer or refusal()
        applied.append("identity: named an enrolled person the gallery did not match")
    if _DEMOGRAPHIC.search(answer) and not _HEDGES.search(answer):
        answer = f"{answer.rstrip()} {DEMOGRAPHIC_NOTE}"
        applied.append("demographics: marked as perceived estimates")
    return PolicyOutcome(answer, applied)


def _refuses(answer: str) -> bool:
    return bool(re.search(r"\b(can't|cannot|can not|unable|won't|not able|don't know|no (enrolled|gallery|match)|"
                          r"does not match|doesn't match|unknown)\b", answer, re.I))
