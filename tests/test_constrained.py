"""Constrained decoding of tool names: inside `<tool_call>{"name": "` only offered tools can be spelled."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from facellm.constrained import ToolNameConstraint, tool_names
from facellm.lm import default_lm_dir
from facellm.tools.registry import openai_tools

NAMES = tool_names(openai_tools())


def test_only_real_tool_names_can_be_spelled():
    tok = AutoTokenizer.from_pretrained(default_lm_dir())
    c = ToolNameConstraint(tok, NAMES)
    targets = [n + '"' for n in NAMES]
    # every allowed token keeps the text on the way to a name (or finishes one)
    for partial in ("", "po", "ident", "a"):
        allowed = c.allowed(partial)
        assert 0 < len(allowed) < 200
        for i in allowed:
            text = partial + tok.decode([i])
            assert any(t.startswith(text) or text.startswith(t) for t in targets), (partial, text)
    # 'age' and 'smile' (names a small model invents) cannot be written
    assert not any(tok.decode([i]).startswith("ge") for i in c.allowed("a"))
    assert not any(tok.decode([i]).startswith("s") for i in c.allowed(""))
    # outside a tool call's name nothing is constrained
    ids = torch.tensor(tok("Sure, <tool_call>\n{\"name\": \"po", add_special_tokens=False)["input_ids"])
    assert set(c(0, ids)) == set(c.allowed("po"))
    free = torch.tensor(tok("The person is", add_special_tokens=False)["input_ids"])
    assert len(c(0, free)) == len(tok)
