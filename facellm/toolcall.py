"""The one tool-call format: Hermes style, as vLLM's built-in ``hermes`` parser reads it.

A call, in the assistant's text (several calls: several blocks, one after another)::

    <tool_call>
    {"name": "pose", "arguments": {"image": "image_1", "face_id": 1}}
    </tool_call>

A result, as the whole content of a ``tool`` turn (several results of one step: several blocks)::

    <tool_response>
    {"image":"image_1","num_faces":1,...}
    </tool_response>

The tools are offered in the system turn, Hermes / Qwen2.5 style (SmolLM2's own chat template ignores
``tools`` entirely, so this section is ours; ``CHAT_TEMPLATE`` is the same rendering as a Jinja template for
``tokenizer.apply_chat_template`` and vLLM's ``--chat-template``)::

    <|im_start|>system
    {system prompt}

    # Tools

    You may call one or more functions to assist with the user query.

    You are provided with function signatures within <tools></tools> XML tags:
    <tools>
    {"name": "detect", "description": "...", "parameters": {...}}
    ...
    </tools>

    For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call><|im_end|>

Everything else is SmolLM2's ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. Images in a message are
written as ``<image>`` (the processor expands it).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<tool_response>", "</tool_response>"
IMAGE_TOKEN = "<image>"
# The agent, the trainer and the server all use this one system prompt, so the model is prompted at inference
# exactly as its agent traces were written.
DEFAULT_SYSTEM = ("You are FaceLLM, an assistant that analyses faces in images. Answer from what the face "
                  "tools measured, phrase demographic estimates as perceived, and never name a person "
                  "unless the gallery matched them. Refer to images by their ids (image_1, image_2, ...) in "
                  "tool calls.")
TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("</tools>\n\nFor each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                "<args-json-object>}\n</tool_call>")


class ToolCallError(ValueError):
    """A ``<tool_call>`` block that could not be read as a call; the message says what is wrong."""


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])
    repaired: bool = False  # True when the JSON needed a repair to parse

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass
class ParsedMessage:
    content: str  # the text outside the tool-call blocks, stripped
    tool_calls: list[ToolCall]
    errors: list[ToolCallError]


# ------------------------------------------------------------------ rendering


def _dump(obj: Any) -> str:
    # the separators and key order of transformers' `tojson` filter, so Python and Jinja agree byte for byte
    return json.dumps(obj, ensure_ascii=False)


def render_tool_call(name: str, arguments: Mapping[str, Any] | str) -> str:
    args = arguments if isinstance(arguments, str) else _dump(dict(arguments))
    return f'{TOOL_CALL_START}\n{{"name": {_dump(name)}, "arguments": {args}}}\n{TOOL_CALL_END}'


def render_tool_calls(calls: Iterable[ToolCall | Mapping[str, Any]]) -> str:
    """Calls as ToolCall objects, OpenAI ``tool_calls`` entries or ``{"name", "arguments"}`` dicts."""
    out = []
    for c in calls:
        if isinstance(c, ToolCall):
            out.append(render_tool_call(c.name, c.arguments))
        else:
            fn = c.get("function", c)
            out.append(render_tool_call(fn["name"], fn.get("arguments", {})))
    return "\n".join(out)


def render_tool_response(result: Any) -> str:
    """A tool result (any JSON-able value, or text already serialised) wrapped for a ``tool`` turn."""
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    return f"{TOOL_RESPONSE_START}\n{text}\n{TOOL_RESPONSE_END}"


def tool_signature(fn: Mapping[str, Any]) -> str:
    """One tool as one compact JSON line: name, description and ``{argument: "type"}`` (required ones marked).

    The full JSON schema of our 10 tools costs ~1400 prompt tokens; this form ~550 — for a small LM on a CPU
    that is seconds per agent step. Argument descriptions are dropped; names and types are what the model
    needs to write a call."""
    params = fn.get("parameters") or {}
    required = set(params.get("required") or [])
    args = ", ".join(f"{_dump(k)}: {_dump(str(v.get('type', 'any')) + (' (required)' if k in required else ''))}"
                     for k, v in (params.get("properties") or {}).items())
    return f'{{"name": {_dump(fn["name"])}, "description": {_dump(fn.get("description", ""))}, "arguments": {{{args}}}}}'


def tools_section(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system-prompt block that offers ``tools`` (OpenAI ``tools`` entries or bare function dicts)."""
    lines = [TOOLS_HEADER]
    for t in tools:
        lines.append(tool_signature(t.get("function", t)))
    lines.append(TOOLS_FOOTER)
    return "\n".join(lines)


def _content_text(content: Any) -> str:
    """Message content as text: a string, or OpenAI content parts (images become ``<image>``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append(part["text"])
        elif kind in ("image", "image_url", "input_image"):
            parts.append(IMAGE_TOKEN + "\n")
        else:
            raise ValueError(f"unsupported content part type {kind!r}")
    return "".join(parts)


def render_chatml(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None, *,
                  add_generation_prompt: bool = False, default_system: str = DEFAULT_SYSTEM) -> str:
    """The text the LM is trained on / prompted with, for an OpenAI-style conversation.

    Assistant ``tool_calls`` are rendered as ``<tool_call>`` blocks after the assistant's text; consecutive
    ``tool`` messages become one ``tool`` turn of ``<tool_response>`` blocks. Identical to
    ``tokenizer.apply_chat_template(messages, tools=tools, chat_template=CHAT_TEMPLATE, tokenize=False)``.
    """
    out: list[str] = []
    msgs = list(messages)
    if msgs and msgs[0].get("role") == "system":
        system, msgs = _content_text(msgs[0].get("content")), msgs[1:]
    else:
        system = default_system
    if tools:
        system = (system + "\n\n" if system else "") + tools_section(tools)
    out.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    i = 0
    while i < len(msgs):
        m = msgs[i]
        role = m.get("role")
        if role == "tool":
            block = []
            while i < len(msgs) and msgs[i].get("role") == "tool":
                block.append(render_tool_response(_content_text(msgs[i].get("content"))))
                i += 1
            out.append("<|im_start|>tool\n" + "\n".join(block) + "<|im_end|>\n")
            continue
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"unknown message role {role!r}")
        text = _content_text(m.get("content"))
        if role == "assistant" and m.get("tool_calls"):
            calls = render_tool_calls(m["tool_calls"])
            text = f"{text}\n{calls}" if text else calls
        out.append(f"<|im_start|>{role}\n{text}<|im_end|>\n")
        i += 1
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


# The same rendering for tokenizer.apply_chat_template / vLLM (--chat-template). Kept in step with
# render_chatml by a test that compares the two on conversations with and without tools. No whitespace
# control: the pieces are concatenated without spaces. transformers renders with trim_blocks, which eats a
# newline right after a block tag, so those newlines are written as {{ '\n' }}.
CHAT_TEMPLATE = (
    "{% set ns = namespace(system='" + DEFAULT_SYSTEM.replace("'", "\\'") + "') %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}{% set ns.system = messages[0]['content'] %}"
    "{% else %}{% set ns.system = messages[0]['content'] | map(attribute='text') | join('') %}{% endif %}"
    "{% set msgs = messages[1:] %}{% else %}{% set msgs = messages %}{% endif %}"
    "<|im_start|>system\n{{ ns.system }}"
    "{% if tools %}{% if ns.system %}{{ '\\n\\n' }}{% endif %}"
    "{{ " + json.dumps(TOOLS_HEADER) + " }}"
    "{% for t in tools %}{{ '\\n' }}{% set f = t.function if t.function is defined else t %}"
    "{% set req = (f.parameters.required if f.parameters is defined and f.parameters.required is defined else []) %}"
    "{\"name\": {{ f.name | tojson }}, \"description\": {{ (f.description or '') | tojson }}, \"arguments\": {{ '{' }}"
    "{% if f.parameters is defined and f.parameters.properties is defined %}"
    "{% for k, v in f.parameters.properties.items() %}{% if not loop.first %}, {% endif %}"
    "{{ k | tojson }}: {{ ((v.type if v.type is defined else 'any') ~ (' (required)' if k in req else '')) | tojson }}"
    "{% endfor %}{% endif %}{{ '}}' }}"
    "{% endfor %}"
    "{{ '\\n' + " + json.dumps(TOOLS_FOOTER) + " }}{% endif %}<|im_end|>\n"
    "{% for m in msgs %}"
    "{% if m['role'] == 'tool' %}"
    "{% if loop.first or msgs[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>tool\n{% else %}{{ '\\n' }}{% endif %}"
    "<tool_response>\n{{ m['content'] }}\n</tool_response>"
    "{% if loop.last or msgs[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% elif m['content'] %}{% for p in m['content'] %}"
    "{% if p['type'] == 'text' %}{{ p['text'] }}{% else %}<image>\n{% endif %}{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' and m['tool_calls'] %}"
    "{% for c in m['tool_calls'] %}{% set f = c.function if c.function is defined else c %}"
    "{% if not loop.first or m['content'] %}{{ '\\n' }}{% endif %}"
    "<tool_call>\n{\"name\": {{ f.name | tojson }}, \"arguments\":"
    "{% if f.arguments is string %}{{ ' ' + f.arguments }}{% else %}{{ ' ' + f.arguments | tojson }}{% endif %}"
    "}\n</tool_call>{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ------------------------------------------------------------------ parsing

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def _outside_strings(text: str, fn) -> str:
    """Apply ``fn`` to the parts of a JSON-ish text that are not inside double-quoted strings."""
    out, i, n = [], 0, len(text)
    while i < n:
        j = text.find('"', i)
        if j < 0:
            out.append(fn(text[i:]))
            break
        out.append(fn(text[i:j]))
        k = j + 1
        while k < n and text[k] != '"':
            k += 2 if text[k] == "\\" else 1
        out.append(text[j:k + 1])
        i = k + 1
    return "".join(out)


def _repair(text: str) -> str:
    """Fix the slips small models make, where the fix is unambiguous."""
    t = text.strip()
    if t.startswith("```"):
        t = re.sub(r"^```(?:json)?\s*|\s*```$", "", t)
    if '"' not in t and "'" in t:
        t = t.replace("'", '"')  # single-quoted keys and strings, and no double quotes to confuse with
    t = _outside_strings(t, lambda s: re.sub(r",\s*([}\]])", r"\1", s))  # trailing commas
    t = _outside_strings(t, lambda s: re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false",
                                                                       re.sub(r"\bNone\b", "null", s))))
    opened = t.count("{") - t.count("}")
    if 0 < opened <= 2:  # a truncated call that only lacks its closing braces
        t += "}" * opened
    return t


def _call_from_json(obj: Any, repaired: bool) -> ToolCall:
    if not isinstance(obj, dict):
        raise ToolCallError(f"a tool call must be a JSON object with 'name' and 'arguments', got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolCallError("the tool call has no 'name'")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # OpenAI-style arguments serialised as a string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ToolCallError(f"the arguments of {name!r} are a string that is not JSON: {args[:80]!r}") from None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ToolCallError(f"the arguments of {name!r} must be a JSON object, got {type(args).__name__}")
    return ToolCall(name=name.strip(), arguments=args, repaired=repaired)


def parse_tool_call(block: str) -> ToolCall:
    """One call from the JSON inside a ``<tool_call>`` block; repairs small slips, else ``ToolCallError``."""
    raw = block.strip()
    if not raw:
        raise ToolCallError("empty <tool_call> block")
    try:
        return _call_from_json(json.loads(raw), repaired=False)
    except json.JSONDecodeError as first:
        fixed = _repair(raw)
        try:
            return _call_from_json(json.loads(fixed), repaired=True)
        except json.JSONDecodeError:
            snippet = raw if len(raw) <= 120 else raw[:117] + "..."
            raise ToolCallError(f"malformed tool call JSON ({first.msg} at character {first.pos}): {snippet}") from None


def parse_tool_calls(text: str, *, strict: bool = False) -> ParsedMessage:
    """Every ``<tool_call>`` block in an assistant's text, in order.

    A final block without ``</tool_call>`` (generation stopped) is still read. Malformed blocks are
    collected in ``errors`` (or raised, with ``strict=True``) so the agent can feed the message back.
    """
    calls: list[ToolCall] = []
    errors: list[ToolCallError] = []
    for m in _BLOCK.finditer(text):
        try:
            calls.append(parse_tool_call(m.group(1)))
        except ToolCallError as e:
            if strict:
                raise
            errors.append(e)
    first = text.find(TOOL_CALL_START)
    content = text if first < 0 else text[:first]
    stray = _BLOCK.sub("", text[first:]).strip() if first >= 0 else ""
    if stray:  # text after the calls: keep it, it is part of what the model said
        content = (content.rstrip() + "\n" + stray).strip()
    if TOOL_CALL_END in content:
        err = ToolCallError("found </tool_call> without a matching <tool_call>")
        if strict:
            raise err
        errors.append(err)
    return ParsedMessage(content=content.strip(), tool_calls=calls, errors=errors)


def parse_tool_responses(text: str) -> list[Any]:
    """The results inside a ``tool`` turn's ``<tool_response>`` blocks (JSON where it parses, else text)."""
    out = []
    for m in re.finditer(r"<tool_response>\s*(.*?)\s*</tool_response>", text, re.DOTALL):
        try:
            out.append(json.loads(m.group(1)))
        except json.JSONDecodeError:
            out.append(m.group(1))
    return out
