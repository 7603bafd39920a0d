"""From generated text to the OpenAI answer: stop strings, held-back tails, tool calls.

``OutputTracker`` sees the text as it arrives, releases what can safely be shown (never a prefix of a stop
string or of ``<tool_call>`` that might still complete), cuts at the first stop string, and at the end reads
the tool calls out of the whole answer with ``facellm.toolcall.parse_tool_calls`` (the one tool-call format).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from facellm.toolcall import TOOL_CALL_START, parse_tool_calls


@dataclass
class FinalAnswer:
    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    tool_call_errors: list[str] = field(default_factory=list)


class OutputTracker:
    def __init__(self, stops: list[str], tools: bool, prefill: str = "") -> None:
        self.stops = [s for s in stops if s]
        self.tools = tools
        self.text = prefill  # everything the model "said", the prefill included
        self.shown = 0  # how much of self.text has been released as content
        self.in_calls = bool(prefill)  # a forced tool call: nothing is content until parsed
        self.stopped = False

    def _watch(self) -> list[str]:
        return self.stops + ([TOOL_CALL_START] if self.tools else [])

    def add(self, piece: str) -> str:
        """Add generated text; returns the newly showable content (may be empty)."""
        if self.stopped or not piece:
            return ""
        self.text += piece
        for s in self.stops:
            i = self.text.find(s, max(0, self.shown - len(s)))
            if i >= 0:
                self.text = self.text[:i]
                self.stopped = True
        if self.in_calls:
            return ""
        if self.tools:
            j = self.text.find(TOOL_CALL_START, max(0, self.shown - len(TOOL_CALL_START)))
            if j >= 0:
                self.in_calls = True
                out, self.shown = self.text[self.shown:j], j
                return out
        if self.stopped:
            out, self.shown = self.text[self.shown:], len(self.text)
            return out
        end = len(self.text)
        for w in self._watch():  # hold back a tail that could be the start of a watched string
            for k in range(min(len(w) - 1, end - self.shown), 0, -1):
                if self.text.endswith(w[:k]):
                    end = min(end, len(self.text) - k)
                    break
        out, self.shown = self.text[self.shown:end], end
        return out

    def flush(self) -> str:
        """The held-back tail once generation has ended (content only)."""
        if self.in_calls:
            return ""
        out, self.shown = self.text[self.shown:], len(self.text)
        return out

    def final(self) -> FinalAnswer:
        if not self.tools:
            return FinalAnswer(content=self.text)
        parsed = parse_tool_calls(self.text)
        calls = [c.to_openai() for c in parsed.tool_calls]
        if not calls:  # nothing usable: the whole text is the answer
            return FinalAnswer(content=self.text, tool_call_errors=[str(e) for e in parsed.errors])
        return FinalAnswer(content=parsed.content or None, tool_calls=calls,
                           tool_call_errors=[str(e) for e in parsed.errors])
