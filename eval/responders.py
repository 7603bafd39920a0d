"""The models under test, behind one interface: ``respond(item, messages, tools) -> Reply``.

* ``EndpointResponder``: any OpenAI-compatible ``/v1/chat/completions`` (our server, vLLM, ...), images sent
  as data URIs, tools as OpenAI ``tools``; tool calls read from ``tool_calls`` or from Hermes
  ``<tool_call>`` blocks in the text (servers without a tool parser).
* ``LocalResponder``: a FaceLLM in this process (``model.chat``), tools offered in the system turn in the one
  tool-call format (facellm/toolcall.py).
* Baselines: ``RandomBaseline`` and ``MajorityBaseline`` (answer without looking), and the tools-only agent
  (tools_agent.py). "The LM without image input" is any model run with ``with_images=False``.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from facellm.toolcall import DEFAULT_SYSTEM, parse_tool_calls, render_tool_calls, render_tool_response, \
    tools_section

from .answers import AGE_GROUPS, EXPRESSIONS
from .clients import image_data_uri, make_client, resolve_model
from .items import LETTERS, SHORT_FORMS, EvalItem


@dataclass
class Reply:
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)  # [{"name": str, "arguments": dict | str}]

    def to_dict(self) -> dict:
        return {"content": self.content, "tool_calls": self.tool_calls}


class Responder(Protocol):
    name: str
    with_images: bool

    def respond(self, item: EvalItem, messages: list[dict], tools: list[dict] | None) -> Reply: ...

    def identity(self) -> str:
        """What must match for a cached answer to be reused (model, weights, generation settings)."""


# ------------------------------------------------------------------ real models


def _calls_from_text(text: str) -> tuple[str, list[dict]]:
    parsed = parse_tool_calls(text or "")
    return parsed.content, [{"name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]


class EndpointResponder:
    def __init__(self, base_url: str, model: str | None = None, *, name: str | None = None,
                 with_images: bool = True, max_tokens: int = 256, temperature: float = 0.0, api_key: str = "EMPTY",
                 timeout: float = 120.0) -> None:
        self.client = make_client(base_url, api_key=api_key, timeout=timeout)
        self.model = model or resolve_model(self.client)
        self.base_url = str(self.client.base_url)
        self.with_images = with_images
        self.max_tokens, self.temperature = max_tokens, temperature
        self.name = name or (self.model if with_images else f"{self.model} (no image)")

    def identity(self) -> str:
        return json.dumps(["endpoint", self.base_url, self.model, self.with_images, self.max_tokens,
                           self.temperature])

    @staticmethod
    def _wire(messages: list[dict]) -> list[dict]:
        """File paths -> data URIs (the server may run elsewhere)."""
        out = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for p in content:
                    if p.get("type") == "image_url":
                        url = p["image_url"]["url"]
                        if not url.startswith(("data:", "http://", "https://")):
                            url = image_data_uri(url)
                        p = {"type": "image_url", "image_url": {"url": url}}
                    parts.append(p)
                m = {**m, "content": parts}
            out.append(m)
        return out

    def respond(self, item: EvalItem, messages: list[dict], tools: list[dict] | None) -> Reply:
        kwargs: dict[str, Any] = dict(model=self.model, messages=self._wire(messages), max_tokens=self.max_tokens,
                                      temperature=self.temperature)
        if tools:
            kwargs["tools"] = tools
        resp = self.client.chat.completions.create(**kwargs)
        msg = resp.choices[0].message
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in (msg.tool_calls or [])]
        content = msg.content or ""
        if not calls and "<tool_call>" in content:
            content, calls = _calls_from_text(content)
        return Reply(content=content, tool_calls=calls)


_ANALYSES: dict[tuple[str, tuple[str, ...]], object] = {}  # (image path, steps) -> FaceAnalysis, shared by models
_ANALYSES_LOCK = threading.Lock()


def _analysis(processor, path: str):
    """The processor's face analysis of one image file, computed once per run for every model that sees it."""
    from facellm.tools.image_io import as_loaded

    key = (path, tuple(processor.settings.analysis_steps))
    with _ANALYSES_LOCK:
        hit = _ANALYSES.get(key)
    if hit is None:
        hit = processor.analyze(as_loaded(path))
        with _ANALYSES_LOCK:
            _ANALYSES[key] = hit
    return hit


class LocalResponder:
    """A FaceLLM model in this process. Generation holds a lock: one model, one forward at a time.

    The KV cache of the text a prompt shares with the previous one (a long shared context, the tools section)
    is reused (``prefix_cache.PrefixReuse``); ``short_tokens`` caps the answer length of items that ask for a
    short answer (a number, a word, yes/no, a letter)."""

    def __init__(self, model, *, name: str = "facellm", identity: str = "", with_images: bool = True,
                 max_new_tokens: int = 96, short_tokens: int | None = 16, prefix_cache: bool = True) -> None:
        from .prefix_cache import PrefixReuse

        self.model = model
        self.name = name if with_images else f"{name} (no image)"
        self.with_images = with_images
        self.max_new_tokens = max_new_tokens
        self.short_tokens = short_tokens
        self._identity = identity or name
        self._lock = threading.Lock()
        self.prefix = PrefixReuse(model) if prefix_cache else None

    def identity(self) -> str:
        return json.dumps(["local", self._identity, self.with_images, self.max_new_tokens, self.short_tokens])

    def tokens_for(self, item: EvalItem) -> int:
        if self.short_tokens and item.answer_form in SHORT_FORMS:
            return min(self.short_tokens, self.max_new_tokens)
        return self.max_new_tokens

    @staticmethod
    def _as_text_turns(messages: list[dict], tools: list[dict] | None) -> list[dict]:
        """Tool calls and results as the Hermes text the LM is trained on; tools offered in the system turn."""
        out: list[dict] = []
        if tools:
            out.append({"role": "system", "content": f"{DEFAULT_SYSTEM}\n\n{tools_section(tools)}"})
        for m in messages:
            if m["role"] == "assistant":
                text = m.get("content") or ""
                if m.get("tool_calls"):
                    calls = render_tool_calls(m["tool_calls"])
                    text = f"{text}\n{calls}" if text else calls
                out.append({"role": "assistant", "content": text})
            elif m["role"] == "tool":
                out.append({"role": "tool", "content": render_tool_response(m.get("content") or "")})
            else:
                out.append(m)
        return out

    def _generate(self, turns: list[dict], tools: list[dict] | None, max_new_tokens: int) -> str:
        model = self.model
        proc = model.processor
        paths = [p["image_url"]["url"] for m in turns if isinstance(m.get("content"), list)
                 for p in m["content"] if p.get("type") == "image_url"]
        analyses = None
        if paths and proc.settings.use_region_encoder:
            analyses = [_analysis(proc, path) for path in paths]
        batch = proc(turns, analyses=analyses, add_generation_prompt=True, return_labels=False, tools=tools)
        gen: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if tools:
            from facellm.constrained import tool_names

            gen["tool_names"] = tool_names(tools)
        if self.prefix is not None and (past := self.prefix.past_for(batch["input_ids"])) is not None:
            gen["past_key_values"] = past
        out = model.generate(**batch, **gen)
        return proc.decode(out[0]).strip()

    def respond(self, item: EvalItem, messages: list[dict], tools: list[dict] | None) -> Reply:
        turns = self._as_text_turns(messages, tools)
        with self._lock:
            text = self._generate(turns, tools, self.tokens_for(item) if not tools else self.max_new_tokens)
        if tools:
            content, calls = _calls_from_text(text)
            return Reply(content=content, tool_calls=calls)
        return Reply(content=text)


# ------------------------------------------------------------------ answer-without-looking baselines


def _seeded(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big"))


_GENDERS = ("woman", "man")


class RandomBaseline:
    """Uniform guesses, seeded per item (the same guess on every run)."""

    with_images = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.name = "random"

    def identity(self) -> str:
        return json.dumps(["random", self.seed, 2])  # bump when its answers change

    def respond(self, item: EvalItem, messages: list[dict], tools: list[dict] | None) -> Reply:
        rng = _seeded(self.seed, item.id, len(messages))
        if item.kind == "mc":
            return Reply(content=rng.choice(LETTERS[: len(item.options)]))
        if item.kind == "attribute":
            pools = {"expression": EXPRESSIONS, "gender": _GENDERS, "age_group": AGE_GROUPS, "same_person": ("yes", "no")}
            if item.attribute == "age":
                return Reply(content=str(rng.randint(1, 80)))
            if item.attribute == "count":
                return Reply(content=str(rng.randint(1, 5)))
            return Reply(content=rng.choice(pools[item.attribute]))
        if item.kind == "tool" and tools and len(messages) == 1:
            name = rng.choice([t["function"]["name"] for t in tools])
            return Reply(tool_calls=[{"name": name, "arguments": {"image": "image_1"}}])
        return Reply(content="")


class MajorityBaseline:
    """The most frequent reference answer of the item's task among the *other* items of the benchmark
    (leave-one-out, so an item's own answer never counts towards its guess); the most frequent correct
    letter when the task has no other items."""

    with_images = False

    def __init__(self, items: list[EvalItem]) -> None:
        self.name = "majority"
        self.counts: dict[str, Counter] = {}
        self.own: dict[str, str] = {}
        self.letters: Counter = Counter()
        self.ages: dict[str, float] = {}
        for it in items:
            value = self._value(it)
            if value is None:
                continue
            if it.kind == "attribute" and it.attribute == "age":
                self.ages[it.id] = float(value)
                continue
            self.counts.setdefault(self._task(it), Counter())[value] += 1
            self.own[it.id] = value
            if it.kind == "mc":
                self.letters[it.answer_letter] += 1
        state = [sorted((k, sorted(c.items())) for k, c in self.counts.items()), sorted(self.ages.items())]
        self._fingerprint = hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]

    @staticmethod
    def _task(it: EvalItem) -> str:
        return f"{it.kind}:{it.category}:{it.sub_category}:{it.attribute or ''}"

    @staticmethod
    def _value(it: EvalItem) -> str | float | None:
        if it.kind == "mc":
            return it.correct_option
        if it.kind == "attribute" and it.attribute == "age":
            ref = it.reference
            return (ref[0] + ref[1]) / 2 if isinstance(ref, list) else float(ref)
        if it.kind == "tool":
            return it.expected_tools[0]
        return None if it.reference is None else str(it.reference)

    def identity(self) -> str:
        return json.dumps(["majority", 2, self._fingerprint])  # bump when its answers change

    def _best(self, item: EvalItem) -> str | None:
        counts = Counter(self.counts.get(self._task(item), Counter()))
        if item.id in self.own:
            counts[self.own[item.id]] -= 1
        counts = +counts  # drop zero counts
        if not counts:
            return None
        top = max(counts.values())
        return min(v for v, c in counts.items() if c == top)  # ties: a fixed choice

    def respond(self, item: EvalItem, messages: list[dict], tools: list[dict] | None) -> Reply:
        if item.kind == "attribute" and item.attribute == "age":
            others = sorted(v for k, v in self.ages.items() if k != item.id)
            return Reply(content=f"{others[len(others) // 2]:g}" if others else "30")
        best = self._best(item)
        if item.kind == "mc":
            if best is not None and best in item.options:
                return Reply(content=LETTERS[item.options.index(best)])
            letters = Counter(self.letters)
            letters[item.answer_letter] -= 1
            valid = [x for x in LETTERS[: len(item.options)] if letters[x] > 0]
            return Reply(content=max(valid, key=lambda x: (letters[x], -ord(x))) if valid else "A")
        if item.kind == "tool":  # the most frequent first tool; it cannot read the result, so it says nothing
            if tools and len(messages) == 1 and best:
                return Reply(tool_calls=[{"name": best, "arguments": {"image": "image_1"}}])
            return Reply(content="")
        return Reply(content=best or "")
