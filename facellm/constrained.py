"""Constrained decoding of tool names: inside ``<tool_call>{"name": "`` only the offered tools can be written.

A small LM learns the tool-call format long before it learns the tool names (it writes ``"name": "age"`` for
``attributes``). Restricting the tokens it may pick while it spells the name — the way vLLM's guided decoding
forces ``tool_choice`` — makes every call name a real tool; the model still chooses *which* tool, and writes
the arguments freely. Used through ``prefix_allowed_tokens_fn`` of transformers' ``generate``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PIECES: dict[tuple[int, int], list[str]] = {}
_OPEN_NAME = re.compile(r'<tool_call>\s*\{\s*"name"\s*:\s*"([^"]*)$')


class ToolNameConstraint:
    """``prefix_allowed_tokens_fn`` for generate(): free text everywhere except inside a tool call's name."""

    def __init__(self, tokenizer, names: Sequence[str], prompt_len: int = 0) -> None:
        if not names:
            raise ValueError("no tool names to constrain to")
        self.tokenizer = tokenizer
        self.targets = [n + '"' for n in names]  # the name and its closing quote
        self.prompt_len = prompt_len  # tokens of input_ids that are prompt (0 when generating from embeddings)
        self._pieces: list[str] | None = None
        self._all = list(range(len(tokenizer)))
        self._cache: dict[str, list[int]] = {}

    def _vocab_pieces(self) -> list[str]:
        if self._pieces is None:  # each token's text, decoded once per tokenizer
            key = (id(self.tokenizer), len(self.tokenizer))
            if key not in _PIECES:
                _PIECES[key] = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._pieces = _PIECES[key]
        return self._pieces

    def allowed(self, partial: str) -> list[int]:
        """Tokens that keep ``partial`` on the way to one of the names (or finish it with the quote)."""
        if partial not in self._cache:
            ok = []
            for i, piece in enumerate(self._vocab_pieces()):
                if not piece:
                    continue
                text = partial + piece
                if any(t.startswith(text) or text.startswith(t) for t in self.targets):
                    ok.append(i)
            self._cache[partial] = ok or self._all
        return self._cache[partial]

    def __call__(self, batch_id: int, input_ids) -> list[int]:
        text = self.tokenizer.decode(input_ids[self.prompt_len:], skip_special_tokens=False)
        m = _OPEN_NAME.search(text[-200:])
        return self.allowed(m.group(1)) if m else self._all


def tool_names(tools: Sequence[dict] | None) -> list[str]:
    """The function names of OpenAI-style tool definitions."""
    return [t.get("function", t)["name"] for t in tools or []]
