"""An OpenAI chat request -> what every engine generates from (``PreparedPrompt``), built once by the front end.

Both engines see the same conversation in the same text format (facellm.toolcall's: ChatML, FaceLLM's default
system prompt when the request has none, tools offered Hermes-style in the system turn, assistant tool calls as
``<tool_call>`` blocks, tool results as ``<tool_response>`` blocks in one ``tool`` turn: the chat template
(``facellm.toolcall.CHAT_TEMPLATE``) wraps each ``tool`` message and joins consecutive ones, so they are passed
on unwrapped, one message each, as ``render_chatml`` and the training traces write them). Images become image
parts (decoded here, under the server's limits) that FaceLLM's processor expands into its placeholder span.

``tool_choice``: "auto" (default when tools are given) offers the tools; "none" leaves them out; "required" and a
named function also *start* the answer with ``<tool_call>`` (and the function's name), so a model that was not
going to call a tool still writes a call. The prefill is part of the prompt for both engines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from facellm.tools.image_io import LoadedImage
from facellm.toolcall import DEFAULT_SYSTEM, TOOL_CALL_START, render_tool_calls, tools_section

from .images import ImageRefused, resolve_image
from .protocol import ChatCompletionRequest
from .settings import ServeSettings

IMAGE_TOKEN = "<image>"


class BadRequest(ValueError):
    """The request is well-formed JSON but cannot be served as asked (HTTP 400); ``code`` and ``param`` in the
    server's error vocabulary (serve/errors.py)."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class SamplingSettings:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class PreparedPrompt:
    """messages: role + content, content a string or parts ({"type": "text"} / {"type": "image", "image": img}),
    ready for ``FaceLLMProcessor``. images: the decoded images in order. prefill: text the answer starts with.
    tools: the offered tools (OpenAI dicts), or None. analyses: per image, a ``FaceAnalysis`` the face tools
    already made (the agent's cached ones) or None (the engine runs the face tools); None: none given."""

    messages: list[dict]
    images: list[LoadedImage]
    prefill: str = ""
    tools: list[dict] | None = None
    forced_tool: bool = False
    analyses: list[Any] | None = None

    def text_messages(self) -> list[dict]:
        """The same conversation with string contents, each image written as ``<image>`` (joined with newlines,
        as FaceLLMProcessor joins the parts of a message)."""
        out = []
        for m in self.messages:
            c = m["content"]
            if isinstance(c, list):
                c = "\n".join(p["text"] if p["type"] == "text" else IMAGE_TOKEN for p in c
                              if p["type"] != "text" or p["text"])
            out.append({"role": m["role"], "content": c})
        return out


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for p in content:
        if p.get("type") != "text":
            raise BadRequest(f"{where} messages may only contain text parts")
        parts.append(p.get("text") or "")
    return "".join(parts)


Resolver = Callable[[str], LoadedImage]


def _user_parts(content: Any, settings: ServeSettings, images: list[LoadedImage],
                resolve: Resolver | None = None) -> str | list[dict]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[dict] = []
    for p in content:
        kind = p.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": p.get("text") or ""})
        elif kind in ("image_url", "input_image"):
            ref = p.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if len(images) >= settings.max_images:
                raise BadRequest(f"at most {settings.max_images} images per request", "too_many_images", "messages")
            img = resolve(url) if resolve is not None else resolve_image(url, settings)
            images.append(img)
            parts.append({"type": "image", "image": img})
        else:
            raise BadRequest(f"unsupported content part type {kind!r}; use 'text' or 'image_url'")
    return parts


def _tool_choice(req: ChatCompletionRequest) -> tuple[list[dict] | None, str]:
    """(tools to offer, prefill)."""
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    choice = req.tool_choice if req.tool_choice is not None else "auto"
    if not tools:
        if choice not in ("auto", "none"):
            raise BadRequest("tool_choice needs tools", "invalid_tool_choice", "tool_choice")
        return None, ""
    if choice == "none":
        return None, ""
    if choice == "auto":
        return tools, ""
    if choice == "required":
        return tools, TOOL_CALL_START + "\n"
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        names = [t["function"]["name"] for t in tools]
        if name not in names:
            raise BadRequest(f"tool_choice names {name!r}, which is not among the tools {names}",
                             "invalid_tool_choice", "tool_choice")
        return tools, f'{TOOL_CALL_START}\n{{"name": {json.dumps(name)}, "arguments": '
    raise BadRequest(f"unsupported tool_choice {choice!r}; use 'auto', 'none', 'required' or a function",
                     "invalid_tool_choice", "tool_choice")


def prepare(req: ChatCompletionRequest, settings: ServeSettings, *,
            resolve: Resolver | None = None) -> PreparedPrompt:
    """Check and normalise the conversation; decode its images (``ImageRefused`` / ``BadRequest`` on failure).

    resolve: turns an image part's url into the image instead of ``resolve_image`` under the server's rules
    (the query API's agent names the images of its conversation by id)."""
    tools, prefill = _tool_choice(req)
    msgs = list(req.messages)
    system = DEFAULT_SYSTEM
    if msgs and msgs[0].role in ("system", "developer"):
        system = _text_of(msgs[0].content, "system")
        msgs = msgs[1:]
    if tools:
        system = (system + "\n\n" if system else "") + tools_section(tools)
    out: list[dict] = [{"role": "system", "content": system}]
    images: list[LoadedImage] = []
    i = 0
    while i < len(msgs):
        m = msgs[i]
        if m.role == "tool":  # the template wraps each result in <tool_response> and joins consecutive ones
            out.append({"role": "tool", "content": _text_of(m.content, "tool")})
            i += 1
            continue
        if m.role in ("system", "developer"):
            out.append({"role": "system", "content": _text_of(m.content, "system")})
        elif m.role == "assistant":
            text = _text_of(m.content, "assistant")
            if m.tool_calls:
                try:
                    calls = render_tool_calls(m.tool_calls)
                except (KeyError, TypeError, AttributeError):
                    raise BadRequest("assistant tool_calls need function.name and function.arguments") from None
                text = f"{text}\n{calls}" if text else calls
            out.append({"role": "assistant", "content": text})
        else:
            out.append({"role": "user", "content": _user_parts(m.content, settings, images, resolve)})
        i += 1
    if out[-1]["role"] == "assistant":
        raise BadRequest("the last message must not be the assistant's (continuing an answer is not supported)")
    return PreparedPrompt(messages=out, images=images, prefill=prefill, tools=tools, forced_tool=bool(prefill))


def sampling(req: ChatCompletionRequest, settings: ServeSettings) -> SamplingSettings:
    n = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
    if n > settings.max_tokens_limit:
        raise BadRequest(f"max_tokens {n} is over the server's limit of {settings.max_tokens_limit}",
                         "max_tokens_too_large", "max_tokens")
    temp = 0.0 if req.temperature is None else float(req.temperature)
    return SamplingSettings(max_tokens=n, temperature=temp, top_p=req.top_p or 1.0, seed=req.seed,
                            stop=list(req.stop or []))


__all__ = ["BadRequest", "ImageRefused", "PreparedPrompt", "SamplingSettings", "prepare", "sampling"]
