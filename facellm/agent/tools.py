"""The face tools as LangChain tools, derived from ``facellm.tools.registry`` (never re-declared).

Each ``ToolSpec`` becomes a ``StructuredTool`` with the spec's name, description and pydantic argument model,
bound to one conversation's ``ImageStore`` (images by reference: ``"image_1"``). The tool returns the
registry's compact JSON text; a ``ToolError`` becomes a ``ToolException`` so LangChain feeds the message
back to the model instead of raising.

``ToolRunner`` is what the agent loop uses: the same registry call, plus a per-call timeout and timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import StructuredTool, ToolException

from facellm.tools.registry import REGISTRY, ImageStore, ToolError, ToolSpec, observation_json

DEFAULT_TIMEOUT_S = 60.0  # the first call on an image loads the face models (a few seconds when cold)


class ToolTimeout(ToolError):
    """A tool ran longer than its time limit."""


@dataclass
class ToolOutcome:
    name: str
    arguments: dict
    result: dict | None  # the registry's result, or None on error
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None

    def observation(self) -> str:
        """What the model reads back: the compact result JSON, or ``{"error": ...}``."""
        return observation_json(self.result if self.ok else {"error": self.error})


class ToolRunner:
    """Runs registry tools (and any extra ``ToolSpec``s) on one ``ImageStore`` with a time limit per call."""

    def __init__(self, store: ImageStore, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 extra: Iterable[ToolSpec] = ()) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.specs: dict[str, ToolSpec] = {**REGISTRY, **{s.name: s for s in extra}}

    def spec(self, name: str) -> ToolSpec:
        if name not in self.specs:
            raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(self.specs)}")
        return self.specs[name]

    def run(self, name: str, arguments: Mapping[str, Any] | str | None) -> ToolOutcome:
        """Validate and run one call; every failure becomes ``ToolOutcome.error`` (plain words), never a raise."""
        t0 = time.perf_counter()
        args = dict(arguments) if isinstance(arguments, Mapping) else {}
        try:
            spec = self.spec(name)
            parsed = spec.validate(arguments)
            args = parsed.model_dump(exclude_none=True)
            result = self._with_timeout(spec, parsed)
            return ToolOutcome(name, args, result, None, time.perf_counter() - t0)
        except ToolError as e:
            return ToolOutcome(name, args, None, str(e), time.perf_counter() - t0)
        except ValueError as e:  # the tools' own input errors (no face, unreadable image, ...)
            return ToolOutcome(name, args, None, f"{name} failed: {e}", time.perf_counter() - t0)
        except Exception as e:  # a bug in a tool must not end the conversation; the model is told
            return ToolOutcome(name, args, None, f"{name} failed unexpectedly: {type(e).__name__}: {e}",
                               time.perf_counter() - t0)

    def _with_timeout(self, spec: ToolSpec, parsed) -> dict:
        # A daemon thread per call: a tool stuck past its limit is abandoned (Python cannot kill a thread),
        # and the conversation goes on with an error observation.
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = spec.runner(parsed, self.store)
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e

        worker = threading.Thread(target=work, name=f"tool-{spec.name}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            raise ToolTimeout(f"{spec.name} did not finish within {self.timeout_s:g} s and was abandoned")
        if "error" in box:
            raise box["error"]
        return box["result"]


def langchain_tools(store: ImageStore, names: Iterable[str] | None = None, *,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> list[StructuredTool]:
    """One ``StructuredTool`` per registry tool (default: all), bound to ``store``."""
    runner = ToolRunner(store, timeout_s=timeout_s)
    return [_structured(runner, runner.spec(n)) for n in (names if names is not None else REGISTRY)]


def _structured(runner: ToolRunner, spec: ToolSpec) -> StructuredTool:
    def call(**kwargs: Any) -> str:
        out = runner.run(spec.name, {k: v for k, v in kwargs.items() if v is not None})
        if not out.ok:
            raise ToolException(out.error)
        return out.observation()

    return StructuredTool.from_function(func=call, name=spec.name, description=spec.description,
                                        args_schema=spec.args_model, handle_tool_error=True)
