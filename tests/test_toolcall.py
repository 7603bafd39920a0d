"""The one tool-call format: rendering, parsing (with the repairs small models need), and the Jinja chat
template that must render exactly what ``render_chatml`` renders."""

from __future__ import annotations

import json

import pytest
from tiny_facellm import tiny_tokenizer

from facellm.toolcall import (CHAT_TEMPLATE, DEFAULT_SYSTEM, ToolCall, ToolCallError, parse_tool_call,
                              parse_tool_calls, parse_tool_responses, render_chatml, render_tool_call,
                              render_tool_calls, render_tool_response, tools_section)
from facellm.tools.registry import openai_tools


def test_render_tool_call_is_hermes_json_in_tags():
    text = render_tool_call("pose", {"image": "image_1", "face_id": 2})
    assert text == '<tool_call>\n{"name": "pose", "arguments": {"image": "image_1", "face_id": 2}}\n</tool_call>'
    body = text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")
    assert json.loads(body) == {"name": "pose", "arguments": {"image": "image_1", "face_id": 2}}


def test_render_tool_calls_accepts_three_shapes():
    a = render_tool_calls([ToolCall("detect", {"image": "image_1"})])
    b = render_tool_calls([{"name": "detect", "arguments": {"image": "image_1"}}])
    c = render_tool_calls([{"id": "x", "type": "function",
                            "function": {"name": "detect", "arguments": '{"image": "image_1"}'}}])
    assert a == b == c
    two = render_tool_calls([{"name": "detect", "arguments": {}}, {"name": "pose", "arguments": {}}])
    assert two.count("<tool_call>") == 2 and "</tool_call>\n<tool_call>" in two


def test_round_trip_several_calls_and_text():
    text = "Let me look.\n" + render_tool_calls([{"name": "detect", "arguments": {"image": "image_1"}},
                                                  {"name": "expression", "arguments": {"image": "image_1",
                                                                                       "face_id": 3}}])
    parsed = parse_tool_calls(text)
    assert parsed.content == "Let me look."
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("detect", {"image": "image_1"}), ("expression", {"image": "image_1", "face_id": 3})]
    assert not parsed.errors and not any(c.repaired for c in parsed.tool_calls)
    oa = parsed.tool_calls[1].to_openai()
    assert oa["type"] == "function" and json.loads(oa["function"]["arguments"]) == {"image": "image_1", "face_id": 3}


def test_plain_answer_has_no_calls():
    p = parse_tool_calls("There are 6 faces.")
    assert p.content == "There are 6 faces." and p.tool_calls == [] and p.errors == []


@pytest.mark.parametrize("raw, name, args", [
    ("{'name': 'pose', 'arguments': {'image': 'image_1'}}", "pose", {"image": "image_1"}),  # single quotes
    ('{"name": "pose", "arguments": {"image": "image_1",},}', "pose", {"image": "image_1"}),  # trailing commas
    ('{"name": "pose", "arguments": {"image": "image_1"', "pose", {"image": "image_1"}),  # truncated braces
    ('```json\n{"name": "detect", "arguments": {}}\n```', "detect", {}),  # code fence
    ('{"name": "detect", "arguments": {"x": True, "y": None}}', "detect", {"x": True, "y": None}),  # Python literals
    ('{"name": "detect", "parameters": {"image": "image_2"}}', "detect", {"image": "image_2"}),  # 'parameters'
    ('{"name": "detect", "arguments": "{\\"image\\": \\"image_1\\"}"}', "detect", {"image": "image_1"}),  # string args
])
def test_repairs(raw, name, args):
    call = parse_tool_call(raw)
    assert (call.name, call.arguments) == (name, args)


def test_repair_does_not_touch_strings():
    # a comma before a brace inside a string value must survive the trailing-comma repair
    call = parse_tool_call('{"name": "detect", "arguments": {"note": "a,}", "k": 1,}}')
    assert call.arguments == {"note": "a,}", "k": 1} and call.repaired


@pytest.mark.parametrize("raw, message", [
    ("", "empty"),
    ("not json at all", "malformed"),
    ('["detect"]', "JSON object"),
    ('{"arguments": {}}', "no 'name'"),
    ('{"name": "detect", "arguments": [1, 2]}', "must be a JSON object"),
    ('{"name": "detect", "arguments": "image_1"}', "not JSON"),
])
def test_bad_calls_are_reported_not_raised(raw, message):
    with pytest.raises(ToolCallError, match=message):
        parse_tool_call(raw)
    parsed = parse_tool_calls(f"<tool_call>\n{raw}\n</tool_call>")
    assert parsed.tool_calls == [] and len(parsed.errors) == 1 and message.lower() in str(parsed.errors[0]).lower()
    with pytest.raises(ToolCallError):
        parse_tool_calls(f"<tool_call>{raw}</tool_call>", strict=True)


def test_unclosed_last_block_is_read_and_stray_end_tag_reported():
    p = parse_tool_calls('<tool_call>\n{"name": "detect", "arguments": {"image": "image_1"}}')
    assert [c.name for c in p.tool_calls] == ["detect"]
    q = parse_tool_calls("answer </tool_call>")
    assert q.tool_calls == [] and "without a matching" in str(q.errors[0])


def test_tool_responses_round_trip():
    turn = render_tool_response({"num_faces": 2}) + "\n" + render_tool_response("plain text result")
    assert parse_tool_responses(turn) == [{"num_faces": 2}, "plain text result"]
    assert render_tool_response({"a": [1, 2]}) == '<tool_response>\n{"a":[1,2]}\n</tool_response>'


def _conversation() -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who is smiling?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "detect", "arguments": {"image": "image_1"}}},
            {"id": "c2", "type": "function", "function": {"name": "expression", "arguments": '{"image": "image_1"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"num_faces":2}'},
        {"role": "tool", "tool_call_id": "c2", "content": '{"faces":[]}'},
        {"role": "assistant", "content": "Face 2 is smiling."},
        {"role": "user", "content": "And face 1?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"name": "pose", "arguments": {"image": "image_1", "face_id": 1}}]},
    ]


def test_render_chatml_layout():
    text = render_chatml(_conversation(), openai_tools(["detect", "expression"]), add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}\n\n# Tools\n")
    assert "<tools>\n{\"name\": \"detect\"" in text and "</tools>" in text
    assert "<|im_start|>user\n<image>\nWho is smiling?<|im_end|>" in text
    # two results of one step: one tool turn with two blocks
    assert ('<|im_start|>tool\n<tool_response>\n{"num_faces":2}\n</tool_response>\n<tool_response>\n'
            '{"faces":[]}\n</tool_response><|im_end|>') in text
    assert 'Checking.\n<tool_call>\n{"name": "pose", "arguments": {"image": "image_1", "face_id": 1}}' in text
    assert text.endswith("<|im_start|>assistant\n")
    # the calls parse back out of the rendered assistant turn
    turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert [c.name for c in parse_tool_calls(turn).tool_calls] == ["detect", "expression"]


@pytest.mark.parametrize("with_tools", [True, False])
@pytest.mark.parametrize("system", [None, "Be brief.", ""])
@pytest.mark.parametrize("generation", [True, False])
def test_jinja_template_matches_render_chatml(with_tools, system, generation):
    tok = tiny_tokenizer()
    msgs = _conversation()
    if system is not None:
        msgs = [{"role": "system", "content": system}] + msgs
    tools = openai_tools() if with_tools else None
    want = render_chatml(msgs, tools, add_generation_prompt=generation)
    got = tok.apply_chat_template(msgs, tools=tools, chat_template=CHAT_TEMPLATE, tokenize=False,
                                  add_generation_prompt=generation)
    assert got == want


def test_jinja_template_system_as_parts():
    tok = tiny_tokenizer()
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Parts "}, {"type": "text", "text": "joined."}]},
            {"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, chat_template=CHAT_TEMPLATE, tokenize=False) == render_chatml(msgs)


def test_tools_section_takes_bare_functions_too():
    fns = [t["function"] for t in openai_tools(["pose"])]
    assert tools_section(fns) == tools_section(openai_tools(["pose"]))


def test_bad_roles_and_parts_are_refused():
    with pytest.raises(ValueError, match="role"):
        render_chatml([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="content part"):
        render_chatml([{"role": "user", "content": [{"type": "audio"}]}])
