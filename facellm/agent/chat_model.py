"""FaceLLM as a LangChain chat model, in-process, with real tool calls; and ``ChatOpenAI`` against any
OpenAI-compatible endpoint as a drop-in replacement.

``FaceLLMChatModel(model=FaceLLMForConditionalGeneration)``: LangChain messages -> OpenAI-style messages ->
the model's processor (image parts become the vision tower's and region encoder's inputs) -> ``generate`` ->
``facellm.toolcall.parse_tool_calls`` (the one Hermes ``<tool_call>`` format) -> an ``AIMessage`` with
``tool_calls`` (and ``invalid_tool_calls`` for blocks that could not be read).

Image parts: ``{"type": "image_url", "image_url": {"url": ...}}`` with a path, a data: URI, or the id of an
image in the ``ImageStore`` given by ``with_store`` (the agent's way: the store's decoded image and cached
``FaceAnalysis`` are reused, nothing is analysed twice).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from facellm.toolcall import parse_tool_calls
from facellm.tools.registry import REGISTRY


def openai_tool(tool: Any) -> dict:
    """An OpenAI ``tools`` entry; registry tools keep the registry's own schema (the one training used)."""
    if isinstance(tool, dict) and tool.get("type") == "function":
        return tool
    name = getattr(tool, "name", None)
    if isinstance(tool, BaseTool) and name in REGISTRY and tool.description == REGISTRY[name].description:
        return REGISTRY[name].openai()
    return convert_to_openai_tool(tool)


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict]:
    """LangChain messages as the OpenAI-style dicts the FaceLLM processor reads."""
    out: list[dict] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _plain(m.content)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": m.content if isinstance(m.content, str) else _parts(m.content)})
        elif isinstance(m, AIMessage):
            msg: dict = {"role": "assistant", "content": _plain(m.content)}
            if m.tool_calls:
                msg["tool_calls"] = [{"id": c.get("id"), "type": "function",
                                      "function": {"name": c["name"], "arguments": c.get("args") or {}}}
                                     for c in m.tool_calls]
            out.append(msg)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": _plain(m.content)})
        else:
            raise ValueError(f"unsupported message type {type(m).__name__}")
    return out


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p if isinstance(p, str) else p.get("text", "") for p in content)


def _parts(content: list) -> list[dict]:
    parts = []
    for p in content:
        if isinstance(p, str):
            parts.append({"type": "text", "text": p})
        elif p.get("type") in ("text", "image_url"):
            parts.append(p)
        elif p.get("type") == "image":  # LangChain's standard block: url / base64 / path
            src = p.get("url") or p.get("path") or (
                f"data:{p.get('mime_type', 'image/png')};base64,{p['base64']}" if p.get("base64") else None)
            parts.append({"type": "image_url", "image_url": {"url": src}})
        else:
            raise ValueError(f"unsupported content part type {p.get('type')!r}")
    return parts


class FaceLLMChatModel(BaseChatModel):
    """FaceLLM (``FaceLLMForConditionalGeneration`` + its processor) as a LangChain chat model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Any = Field(description="a FaceLLMForConditionalGeneration")
    max_new_tokens: int = 128
    do_sample: bool = False
    store: Any = Field(default=None, description="ImageStore resolving image parts given by id")
    prefix_cache: bool = Field(default=True, description="reuse the KV cache of the system turn (tools section)")
    # system-turn token ids -> its KV cache; the tools section is ~800 tokens, the same for every question
    _prefixes: dict = PrivateAttr(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "facellm"

    @classmethod
    def from_pretrained(cls, folder: str | None = None, **kwargs: Any) -> FaceLLMChatModel:
        """A model folder (``save_pretrained`` layout), or the default model when ``folder`` is None."""
        if folder is None:
            from facellm.default_model import load_default_model

            return cls(model=load_default_model(), **kwargs)
        from facellm.modeling import FaceLLMForConditionalGeneration

        return cls(model=FaceLLMForConditionalGeneration.from_pretrained(folder), **kwargs)

    def with_store(self, store: Any) -> FaceLLMChatModel:
        """A copy that resolves image ids through ``store`` (sharing the loaded model)."""
        return self.model_copy(update={"store": store})

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any):
        if tool_choice not in (None, "auto"):
            raise ValueError("FaceLLMChatModel supports tool_choice='auto' only (the model decides)")
        return self.bind(tools=[openai_tool(t) for t in tools], **kwargs)

    def _inputs(self, messages: Sequence[BaseMessage]) -> tuple[list[dict], list | None]:
        """OpenAI messages with store images resolved, and the matching analyses (None: the processor analyses)."""
        msgs = to_openai_messages(messages)
        analyses: list = []
        steps = self.model.processor.settings.analysis_steps
        for m in msgs:
            if not isinstance(m["content"], list):
                continue
            for i, p in enumerate(m["content"]):
                if p.get("type") != "image_url":
                    continue
                url = p["image_url"]["url"] if isinstance(p["image_url"], dict) else p["image_url"]
                if self.store is not None and url in self.store:
                    m["content"][i] = {"type": "image", "image": self.store.loaded(url)}
                    analyses.append(self.store.analysis(url, steps))
                else:
                    analyses.append(None)
        return msgs, (analyses if any(a is not None for a in analyses) else None)

    def _prefix_kv(self, input_ids):
        """A copy of the cached KV of the system turn when this prompt starts with it (computed on first use).

        The system turn holds no image tokens, so its KV depends on its tokens alone; generation then only
        prefills the rest of the conversation. Greedy outputs are identical with and without it."""
        if not self.prefix_cache or input_ids.shape[0] != 1:
            return None
        import copy

        import torch

        ids = input_ids[0].tolist()
        end = self.model.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if end not in ids:
            return None
        key = tuple(ids[: ids.index(end) + 2])  # through "<|im_end|>\n"
        if len(key) >= len(ids):
            return None
        if key not in self._prefixes:
            with torch.no_grad():
                embeds = self.model.get_inputs_embeds(torch.tensor([key]))
                self._prefixes.clear()  # one system prompt at a time: a bounded memory cost
                self._prefixes[key] = self.model.lm(inputs_embeds=embeds, use_cache=True).past_key_values
        return copy.deepcopy(self._prefixes[key])  # generate() extends the cache in place

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        tools = kwargs.pop("tools", None)
        msgs, analyses = self._inputs(messages)
        t0 = time.perf_counter()
        batch = self.model.processor(msgs, analyses=analyses, add_generation_prompt=True, return_labels=False,
                                     tools=tools)
        extra: dict[str, Any] = {}
        if (cached := self._prefix_kv(batch["input_ids"])) is not None:
            extra["past_key_values"] = cached
        if tools and kwargs.get("constrain_tool_names"):  # calls may only name an offered tool
            from facellm.constrained import tool_names

            extra["tool_names"] = tool_names(tools)
        if tools and kwargs.get("tool_probe_tokens"):
            extra["stopping_criteria"] = [_NoToolCallYet(self.model.tokenizer, int(kwargs["tool_probe_tokens"]))]
        out = self.model.generate(**batch, max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
                                  do_sample=self.do_sample, stop_strings=stop or None, **extra)
        text = self.model.processor.decode(out[0], skip_special_tokens=True).strip()
        for s in stop or ():
            text = text.split(s)[0]
        seconds = time.perf_counter() - t0
        msg = message_from_text(text, tools_bound=bool(tools))
        msg.response_metadata = {"model_name": "facellm", "generation_s": round(seconds, 3),
                                 "prompt_tokens": int(batch["input_ids"].shape[1]), "completion_tokens": int(out.shape[1]),
                                 "raw": text}
        return ChatResult(generations=[ChatGeneration(message=msg)])


class _NoToolCallYet:
    """Stop after ``n`` new tokens when the text holds no ``<tool_call>`` by then.

    The agent asks for this only when its rules will answer anyway if the model calls no tool: a model that
    is about to call a tool starts the block within a few tokens (a short preface at most), and a model that
    is not would otherwise spend the whole token budget on text that is thrown away."""

    def __init__(self, tokenizer: Any, n: int) -> None:
        self.tokenizer, self.n = tokenizer, n

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if input_ids.shape[1] < self.n:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        texts = self.tokenizer.batch_decode(input_ids)
        return torch.tensor(["<tool_call>" not in t for t in texts], device=input_ids.device)


def message_from_text(text: str, *, tools_bound: bool = True) -> AIMessage:
    """The model's raw text as an AIMessage: Hermes ``<tool_call>`` blocks become ``tool_calls``, blocks that
    cannot be read become ``invalid_tool_calls`` (with the parser's message), the rest is the content."""
    if not tools_bound:
        return AIMessage(content=text)
    parsed = parse_tool_calls(text)
    return AIMessage(content=parsed.content,
                     tool_calls=[{"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"}
                                 for c in parsed.tool_calls],
                     invalid_tool_calls=[{"name": None, "args": text, "id": None, "error": str(e),
                                          "type": "invalid_tool_call"} for e in parsed.errors])


def openai_chat_model(base_url: str, model: str, *, api_key: str = "none", timeout: float = 120.0,
                      **kwargs: Any) -> BaseChatModel:
    """``ChatOpenAI`` against any OpenAI-compatible endpoint (our ``facellm serve``, vLLM, a bigger hosted
    model), for ``FaceAgent(model=...)``; it sends the registry's tools in the request's ``tools`` field."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base_url, model=model, api_key=api_key, timeout=timeout, temperature=0, **kwargs)


__all__ = ["FaceLLMChatModel", "openai_chat_model", "openai_tool", "to_openai_messages", "message_from_text"]
