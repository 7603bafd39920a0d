"""The served engine's FaceLLM as the agent's LangChain chat model: one generation path for both engines.

``EngineChatModel(engine=..., loop=...)`` turns the agent's LangChain messages into OpenAI-style messages
(``facellm.agent.chat_model.to_openai_messages``, the registry's tool schemas), then into the server's own
``PreparedPrompt`` (``serve.prompt.prepare``: the same system turn, tools section, tool-call and tool-result
rendering as /v1/chat/completions), and generates with ``engine.generate`` on the server's event loop
(``asyncio.run_coroutine_threadsafe`` from the agent's worker thread). The text is read with
``facellm.toolcall.parse_tool_calls`` into an ``AIMessage`` with ``tool_calls`` / ``invalid_tool_calls``.

So the query API's agent runs where the chat completions run: in vLLM (its scheduler, batching and KV cache)
with ``--engine vllm``, on the transformers engine's single generation thread (one generation at a time, with
the chat completions) with ``--engine transformers``.

Images: the agent names its conversation's images by ``ImageStore`` id; they are resolved through the store
(``with_store``): the decoded image, plus the store's cached ``FaceAnalysis`` so the engine does not run the face
tools on it again. Other image parts (data: URIs, paths) go through the server's image rules.

``ModelTurns``: the model turns of one question share its deadline and can be stopped (a query that timed out,
or whose client went away): the running generation is cancelled (the engine frees its slot) and later turns fail
at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from facellm.agent.chat_model import message_from_text, openai_tool, to_openai_messages
from facellm.toolcall import TOOL_CALL_START

from .images import resolve_image
from .output import OutputTracker
from .prompt import PreparedPrompt, SamplingSettings, prepare
from .protocol import ChatCompletionRequest
from .settings import ServeSettings


class ModelTurns:
    """The model turns of one question: the seconds they have left (``left``) and a switch that stops them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[concurrent.futures.Future] = set()
        self.stopped = False
        self.left: Callable[[], float] = lambda: math.inf

    def begin(self, left: Callable[[], float] | None = None) -> None:
        """A new question: ``left()`` gives the seconds it has left (re-read at each turn)."""
        with self._lock:
            self.stopped = False
            self.left = left or (lambda: math.inf)

    def stop(self) -> None:
        """Stop the running turn (its generation is cancelled in the engine) and refuse the next ones."""
        with self._lock:
            self.stopped = True
            running = list(self._running)
        for fut in running:
            fut.cancel()

    def run(self, coro, loop: asyncio.AbstractEventLoop):
        """Run ``coro`` on ``loop`` from this (worker) thread, within the question's time."""
        with self._lock:
            if self.stopped:
                coro.close()
                raise TimeoutError("the question was stopped (timed out, or its client went away)")
            try:
                fut = asyncio.run_coroutine_threadsafe(coro, loop)
            except RuntimeError:  # the event loop is closed: the server is gone
                coro.close()
                raise
            self._running.add(fut)
        try:
            left = self.left()
            return fut.result(timeout=None if left == math.inf else max(0.001, left))
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError("the model's turn did not finish in the question's time") from None
        except concurrent.futures.CancelledError:
            raise TimeoutError("the question was stopped (timed out, or its client went away)") from None
        finally:
            with self._lock:
                self._running.discard(fut)


@dataclass
class Completion:
    text: str  # what the model said (a forced tool call's prefill included), cut at the first stop string
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "probe" (no tool call started within the probe's tokens)


class EngineChatModel(BaseChatModel):
    """FaceLLM through a serving engine (``serve.engines``: transformers or vLLM) as a LangChain chat model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any = Field(description="the server's engine (serve.engines.Engine)")
    loop: Any = Field(description="the event loop the engine generates on (the server's)")
    settings: Any = Field(default=None, description="ServeSettings: the rules for image parts that are not ids")
    max_tokens: int = 128
    temperature: float = 0.0  # greedy, as FaceLLMChatModel
    store: Any = Field(default=None, description="ImageStore resolving image parts given by id")
    turns: Any = Field(default_factory=ModelTurns, description="ModelTurns: the question's deadline and stop")
    on_usage: Any = Field(default=None, description="called on the loop with (prompt_tokens, completion_tokens)")

    @property
    def _llm_type(self) -> str:
        return f"facellm-{getattr(self.engine, 'name', 'engine')}"

    def with_store(self, store: Any) -> EngineChatModel:
        """A copy that resolves image ids through ``store`` (sharing the engine and the turns)."""
        return self.model_copy(update={"store": store})

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any):
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice  # "auto" | "none" | "required" | a function, as the API takes it
        return self.bind(tools=[openai_tool(t) for t in tools], **kwargs)

    # ------------------------------------------------------------------ prompt
    def prompt(self, messages: Sequence[BaseMessage], tools: list[dict] | None = None,
               tool_choice: Any = None) -> PreparedPrompt:
        """The engine's prompt for these messages (image ids resolved through the store, with their analyses)."""
        settings = self.settings or ServeSettings()
        origin: list[str | None] = []  # per image: its store id, or None (resolved under the server's rules)

        def resolve(url: str):
            if self.store is not None and isinstance(url, str) and url in self.store:
                origin.append(url)
                return self.store.loaded(url)
            origin.append(None)
            return resolve_image(url, settings)

        req = ChatCompletionRequest(messages=to_openai_messages(messages), tools=tools or None,
                                    tool_choice=tool_choice)
        prompt = prepare(req, settings, resolve=resolve)
        proc = getattr(self.engine, "processor", None)
        if any(origin) and proc is not None and proc.settings.use_region_encoder:
            steps = proc.settings.analysis_steps  # the store's cached analysis: the face tools ran once
            prompt.analyses = [self.store.analysis(i, steps) if i else None for i in origin]
        return prompt

    # ------------------------------------------------------------------ generation
    async def complete(self, prompt: PreparedPrompt, params: SamplingSettings,
                       probe_tokens: int | None = None) -> Completion:
        """Generate on the engine (run this on ``loop``); stop strings end it early, and so does ``probe_tokens``:
        that many tokens without the start of a tool call (the agent asks for it when its rules would answer
        anyway, so a model that is not calling a tool does not spend the whole budget)."""
        tracker = OutputTracker(params.stop, tools=bool(prompt.tools), prefill=prompt.prefill)
        gen = self.engine.generate(prompt, params, "agent-" + uuid.uuid4().hex[:16])
        n_prompt = n_out = 0
        reason = "stop"
        try:
            async for d in gen:
                n_prompt = d.prompt_tokens or n_prompt
                n_out += len(d.token_ids)
                reason = d.finish_reason or reason
                tracker.add(d.text)
                if tracker.stopped:
                    reason = "stop"
                    break
                if probe_tokens and n_out >= probe_tokens and TOOL_CALL_START not in tracker.text:
                    reason = "probe"
                    break
        finally:
            await gen.aclose()  # an early stop (or a cancelled turn) ends the generation in the engine
            if self.on_usage is not None:
                self.on_usage(n_prompt, n_out)
        return Completion(tracker.text, n_prompt, n_out, reason)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            raise RuntimeError("EngineChatModel.invoke blocks: call it from a worker thread, or use ainvoke")
        tools = kwargs.pop("tools", None)
        prompt = self.prompt(messages, tools, kwargs.pop("tool_choice", None))
        params = SamplingSettings(max_tokens=int(kwargs.get("max_new_tokens") or self.max_tokens),
                                  temperature=self.temperature, stop=list(stop or []))
        probe = int(kwargs["tool_probe_tokens"]) if tools and kwargs.get("tool_probe_tokens") else None
        t0 = time.perf_counter()
        out: Completion = self.turns.run(self.complete(prompt, params, probe), self.loop)
        text = out.text.strip()
        msg = message_from_text(text, tools_bound=bool(prompt.tools))
        msg.response_metadata = {"model_name": "facellm", "engine": getattr(self.engine, "name", None),
                                 "generation_s": round(time.perf_counter() - t0, 3),
                                 "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                                 "finish_reason": out.finish_reason, "raw": text}
        return ChatResult(generations=[ChatGeneration(message=msg)])


__all__ = ["Completion", "EngineChatModel", "ModelTurns"]
