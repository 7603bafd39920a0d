"""Benchmark the server against vLLM's own OpenAI server: same LM, same requests, one run, so every run shows the ratio.

    .venv/bin/python bench/serve.py [--engines vllm-own vllm transformers:bfloat16 transformers:float32]
                                    [--inputs text photo] [--clients 1 8] [--rounds 1] [--max-tokens 64]
                                    [--dtype bfloat16] [--model DIR] [--out bench/results/serve.md]

Servers (each started as a subprocess on loopback, one at a time):

* ``vllm-own``: vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``), the reference. Text
  requests go to the model folder's merged LM (``lm/``, a plain Llama: what ``facellm merge`` writes); photo
  requests to the FaceLLM folder itself through the FaceLLM plugin (``--chat-template`` FaceLLM's), as the README
  describes. Same environment as ``facellm serve --engine vllm`` (threads binding, KV cache, compile cache).
* ``vllm``: ``facellm serve --engine vllm`` on the FaceLLM folder (text and photo requests on one server).
* ``transformers[:DTYPE]``: ``facellm serve --engine transformers`` (photo requests only unless ``--inputs``
  says otherwise); two entries with different dtypes measure e.g. bf16 against fp32 in the same run.

Inputs: ``text`` (a question alone) and ``photo`` (each request its own photo: a random crop of a real photo, so
no cache can skip the face tools, + a question). For each number of concurrent clients: ``clients x rounds``
(at least ``--min-requests``) streamed greedy requests. Measures requests/s, output tokens/s, time to first
token, p50 / p99 latency, the server's peak memory (RSS of the process tree), and for ``facellm serve`` where
each photo request's time went (face tools, vLLM's processor, queue, prefill, decode; from the server's
``FACELLM_SERVE_TIMINGS`` log). Prints a Markdown table with the ratios to the reference and writes it out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from PIL import Image

from facellm.tools.photos import photo

PHOTOS = ("astronaut", "grace_hopper", "group", "tom_hanks")
QUESTIONS = ("How many people are in this photo?", "Describe the face in this photo.",
             "Where is each person looking?", "What expression does the person have?")
TEXT_QUESTIONS = ("What does a smile usually tell you about how someone feels?",
                  "Describe what makes a face look surprised.",
                  "How can you tell which way a person is looking?",
                  "What is the difference between a frown and a neutral face?")
# sent explicitly so every server renders the very same prompt (the template's default system prompt and the
# front end's can differ)
SYSTEM = ("You are FaceLLM, an assistant that analyses faces in images. Answer from what the face tools measured, "
          "phrase demographic estimates as perceived, and never name a person unless the gallery matched them.")
LABELS = {"vllm-own": "vLLM's own server", "vllm": "facellm serve (vllm)", "transformers": "facellm serve (transformers)"}
STAGES = ("tools", "processor", "queue", "prefill", "decode")


@dataclass
class Result:
    server: str  # e.g. "vllm-own", "vllm", "transformers:float32"
    inputs: str  # "text" | "photo"
    clients: int
    requests: int
    wall: float
    out_tokens: int
    ttft: list[float]
    latency: list[float]
    errors: int
    stages: dict[str, float] = field(default_factory=dict)  # median seconds per request, facellm serve only

    @property
    def rps(self) -> float:
        return self.requests / self.wall

    @property
    def tps(self) -> float:
        return self.out_tokens / self.wall

    @property
    def ttft_p50(self) -> float:
        return statistics.median(self.ttft) if self.ttft else float("nan")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def make_images(n: int, seed: int = 0) -> list[str]:
    """n distinct JPEG data URIs: random 85-100 % crops of the real photos, at most 640 px."""
    rng = random.Random(seed)
    base = [Image.open(photo(p)).convert("RGB") for p in PHOTOS]
    out = []
    for i in range(n):
        img = base[i % len(base)]
        w, h = img.size
        s = rng.uniform(0.85, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch))
        crop.thumbnail((640, 640))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=90)
        out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_env(threads: int | None) -> dict[str, str]:
    """The environment ``facellm serve --engine vllm`` gives vLLM (VllmEngine.configure_environment), for both."""
    from facellm.serve.engines import VllmEngine

    saved = dict(os.environ)
    try:
        VllmEngine.configure_environment(2, threads)
        return {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Server:
    """One server subprocess on loopback: ``facellm serve`` or vLLM's own OpenAI server."""

    def __init__(self, kind: str, model: Path, dtype: str, concurrency: int, threads: int | None, log: Path,
                 *, inputs: str = "photo", timings: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if kind == "vllm-own":
            env.update(vllm_env(threads))
            folder = model / "lm" if inputs == "text" else model
            args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                    "--served-model-name", "facellm", "--host", "127.0.0.1", "--port", str(self.port),
                    "--dtype", dtype, "--max-num-seqs", str(concurrency), "--disable-uvicorn-access-log"]
            if inputs == "photo":  # the FaceLLM folder through the plugin, as the README describes
                template = Path(tempfile.mkdtemp(prefix="facellm-bench-")) / "facellm_chat.jinja"
                from facellm.toolcall import CHAT_TEMPLATE

                template.write_text(CHAT_TEMPLATE)
                args += ["--chat-template", str(template), "--chat-template-content-format", "string",
                         "--limit-mm-per-prompt", json.dumps({"image": 8})]
        else:
            engine, _, _ = kind.partition(":")
            args = [sys.executable, "-m", "facellm.serve.cli", "--engine", engine, "--port", str(self.port),
                    "--model", str(model), "--dtype", dtype, "--max-concurrency", str(concurrency),
                    "--max-queue", "256", "--timeout", "600"]
            if engine == "vllm":
                env.update(vllm_env(threads))
        if threads:
            args += [] if kind == "vllm-own" else ["--threads", str(threads)]
        if timings is not None:
            env["FACELLM_SERVE_TIMINGS"] = str(timings)
        self.log = open(log, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.peak = 0
        self._stop = threading.Event()

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.log.name}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    threading.Thread(target=self._watch_memory, daemon=True).start()
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the server did not start in {timeout:.0f} s; see {self.log.name}")

    def _watch_memory(self) -> None:
        root = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.25)

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


async def one_request(client: httpx.AsyncClient, base: str, image: str | None, question: str, max_tokens: int
                      ) -> tuple[float, float, int]:
    content: str | list = question
    if image is not None:
        content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": question}]
    # temperature 0 sent explicitly: vLLM's own server otherwise samples with the model's generation config
    body = {"model": "facellm", "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]}
    t0 = time.perf_counter()
    ttft, tokens = float("nan"), 0
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(ev["error"]["message"])
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            for c in ev.get("choices", []):
                if c["delta"].get("content") and ttft != ttft:
                    ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0, tokens


async def run_level(server: str, inputs: str, base: str, clients: int, n_requests: int, images: list[str],
                    max_tokens: int) -> Result:
    if inputs == "photo":
        jobs = [(images[i % len(images)], QUESTIONS[i % len(QUESTIONS)]) for i in range(n_requests)]
    elif inputs == "photo-repeat":  # one photo again and again: the face tools' cache
        jobs = [(images[0], QUESTIONS[i % len(QUESTIONS)]) for i in range(n_requests)]
    else:
        jobs = [(None, TEXT_QUESTIONS[i % len(TEXT_QUESTIONS)]) for i in range(n_requests)]
    queue: asyncio.Queue = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)
    ttfts, lats, toks, errors = [], [], [0], [0]

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            image, q = queue.get_nowait()
            try:
                ttft, lat, n = await one_request(client, base, image, q, max_tokens)
            except (RuntimeError, httpx.HTTPError) as err:
                errors[0] += 1
                print(f"  request failed: {err}", file=sys.stderr)
                continue
            ttfts.append(ttft)
            lats.append(lat)
            toks[0] += n

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return Result(server, inputs, clients, len(lats), wall, toks[0], [t for t in ttfts if t == t], lats, errors[0])


def read_stages(path: Path, skip: int) -> tuple[dict[str, float], int]:
    """Median seconds per stage of the requests the server logged after the first ``skip`` lines."""
    if not path.exists():
        return {}, skip
    lines = path.read_text().splitlines()
    rows = [json.loads(x) for x in lines[skip:] if x.strip()]
    out = {k: statistics.median(r[k] for r in rows if k in r) for k in STAGES if any(k in r for r in rows)}
    return out, len(lines)


def label(server: str) -> str:
    kind, _, dtype = server.partition(":")
    return LABELS.get(kind, kind) + (f", {dtype}" if dtype else "")


def table(results: list[Result], peaks: dict[str, float], starts: dict[str, float]) -> str:
    lines = ["| server | input | clients | requests | req/s | output tok/s | TTFT p50 (s) | latency p50 (s) "
             "| latency p99 (s) | peak memory (GB) | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {label(r.server)} | {r.inputs} | {r.clients} | {r.requests} | {r.rps:.2f} | {r.tps:.1f} | "
                     f"{r.ttft_p50:.2f} | {_pct(r.latency, 0.5):.2f} | {_pct(r.latency, 0.99):.2f} | "
                     f"{peaks.get((r.server, r.inputs), float('nan')) / 1e9:.2f} | {r.errors} |")
    by = {(r.server, r.inputs, r.clients): r for r in results}
    notes = []
    for inputs in ("text", "photo"):
        for c in sorted({r.clients for r in results}):
            ref, ours = by.get(("vllm-own", inputs, c)), by.get(("vllm", inputs, c))
            if ref and ours and ref.tps > 0:
                notes.append(f"{inputs}, {c} client(s): facellm serve (vllm) / vLLM's own server: output tok/s "
                             f"**{ours.tps / ref.tps:.2f}x**, req/s {ours.rps / ref.rps:.2f}x, TTFT p50 "
                             f"{ours.ttft_p50:.2f} s vs {ref.ttft_p50:.2f} s ({ours.ttft_p50 - ref.ttft_p50:+.2f} s)")
    for c in sorted({r.clients for r in results}):
        lm, plug = by.get(("vllm-own", "text", c)), by.get(("vllm-own", "text+plugin", c))
        if lm and plug and lm.tps > 0:
            notes.append(f"text, {c} client(s): vLLM's own server through the FaceLLM plugin model / on the plain LM: "
                         f"**{plug.tps / lm.tps:.2f}x** output tok/s (the plugin model's own cost)")
        ours = by.get(("vllm", "text", c))
        if plug and ours and plug.tps > 0:
            notes.append(f"text, {c} client(s): facellm serve (vllm) / vLLM's own server on the same FaceLLM folder: "
                         f"**{ours.tps / plug.tps:.2f}x** output tok/s (the front end's cost)")
    trs = sorted({r.server for r in results if r.server.startswith("transformers")})
    for c in sorted({r.clients for r in results}):
        for inputs in ("text", "photo"):
            v = by.get(("vllm", inputs, c))
            for t in trs:
                if v and by.get((t, inputs, c)):
                    notes.append(f"{inputs}, {c} client(s): facellm serve (vllm) / {label(t)}: "
                                 f"**{v.tps / by[t, inputs, c].tps:.2f}x** output tok/s, "
                                 f"req/s {v.rps / by[t, inputs, c].rps:.2f}x")
    if len(trs) == 2:
        a, b = trs
        for c in sorted({r.clients for r in results}):
            for inputs in ("text", "photo"):
                if by.get((a, inputs, c)) and by.get((b, inputs, c)):
                    ra, rb = by[a, inputs, c], by[b, inputs, c]
                    notes.append(f"{inputs}, {c} client(s): {label(a)} / {label(b)}: "
                                 f"**{ra.tps / rb.tps:.2f}x** output tok/s, req/s {ra.rps / rb.rps:.2f}x")
    for r in results:
        if r.stages:
            notes.append(f"{label(r.server)}, {r.inputs}, {r.clients} client(s), median seconds per request: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in r.stages.items()))
    notes += [f"{label(s)} ({i}) ready after {t:.0f} s" for (s, i), t in starts.items()]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def machine_note() -> str:
    load = os.getloadavg()
    mem = psutil.virtual_memory()
    return (f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min), "
            f"{mem.available / 1e9:.0f} of {mem.total / 1e9:.0f} GB memory available")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=["vllm-own", "vllm", "transformers:bfloat16",
                                                     "transformers:float32"],
                    help="vllm-own (the reference), vllm, transformers[:DTYPE]")
    ap.add_argument("--inputs", nargs="+", default=["text", "photo"], choices=["text", "photo"])
    ap.add_argument("--transformers-inputs", nargs="+", default=["text", "photo"], choices=["text", "photo"],
                    help="inputs for the transformers engine (one request at a time: slow)")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--rounds", type=int, default=1, help="requests per client at each level")
    ap.add_argument("--min-requests", type=int, default=4, help="at least this many requests per level")
    ap.add_argument("--threads", type=int, default=1,
                    help="model threads for every server (1: robust on a busy machine; 0: the engines' defaults)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--model", type=Path, default=None,
                    help="merged FaceLLM folder with lm/ (default: `facellm merge` of the default model)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.md")
    ap.add_argument("--note", default="", help="what else the machine was doing, for the report")
    args = ap.parse_args(argv)

    model = args.model or merged_default_model()
    per_level = [max(c * args.rounds, args.min_requests) for c in args.clients]
    # every level (and the warm-up) gets photos of its own, so only photo-repeat can hit a cache
    images = make_images(sum(per_level) + 1)
    slices, start = [], 1
    for n in per_level:
        slices.append(images[start:start + n])
        start += n
    results: list[Result] = []
    peaks: dict[tuple[str, str], float] = {}
    starts: dict[tuple[str, str], float] = {}
    plan: list[tuple[str, list[str]]] = []
    for e in args.engines:
        kind = e.partition(":")[0]
        if kind not in LABELS:
            ap.error(f"unknown engine {e!r}")
        inputs = [i for i in args.inputs if kind != "transformers" or i in args.transformers_inputs]
        if kind == "vllm-own":  # text on lm/; photos (and text again) on the FaceLLM folder with the plugin
            plan += [(e, ["text"])] if "text" in inputs else []
            plan += [(e, ["photo", "text+plugin"] if "text" in inputs else ["photo"])] if "photo" in inputs else []
        elif inputs:
            plan.append((e, inputs + (["photo-repeat"] if kind == "vllm" and "photo" in inputs else [])))
    for server, inputs in plan:
        kind, _, dtype = server.partition(":")
        conc = max(args.clients) if kind != "transformers" else 1
        timings = Path(tempfile.mkstemp(prefix="facellm-timings-", suffix=".jsonl")[1])
        srv = Server(kind, model, dtype or args.dtype, conc,
                     args.threads or None, Path(f"/tmp/facellm-bench-{server.replace(':', '-')}-{inputs[0]}.log"),
                     inputs=inputs[0], timings=None if kind == "vllm-own" else timings)
        try:
            t = srv.wait_ready(900)
            for i in inputs:
                starts[server, i] = t
            print(f"{server} ({', '.join(inputs)}): ready after {t:.0f} s", file=sys.stderr)
            skip = 0
            for i in inputs:
                asyncio.run(run_level(server, i, srv.base, 1, 1, images[:1], 8))  # warm-up, not counted
                _, skip = read_stages(timings, 0)
                for c, n, level_images in zip(args.clients, per_level, slices):
                    r = asyncio.run(run_level(server, i, srv.base, c, n, level_images, args.max_tokens))
                    r.stages, skip = read_stages(timings, skip)
                    print(f"  {server} {i} x{c}: {r.rps:.2f} req/s, {r.tps:.1f} tok/s, TTFT {r.ttft_p50:.2f} s, "
                          f"p50 {_pct(r.latency, .5):.2f} s", file=sys.stderr)
                    results.append(r)
                peaks[server, i] = srv.peak
        finally:
            srv.stop()
            timings.unlink(missing_ok=True)
    cpu = platform.processor() or platform.machine()
    head = (f"# Serving benchmark\n\nModel: `facellm merge` of the default FaceLLM model (EfficientNet-Lite0 + "
            f"region encoder + SmolLM2-135M), LM in {args.dtype} unless the row says otherwise; greedy, up to "
            f"{args.max_tokens} output tokens, streamed. Inputs: `text` = a question alone (vLLM's own server on "
            f"the merged LM `lm/`), `photo` = a distinct photo per request (a random crop of a real photo, so the "
            f"face tools run for each) + a question (vLLM's own server on the FaceLLM folder with the plugin). "
            f"{args.rounds} request(s) per client per level (at least {args.min_requests}); model threads: "
            f"{args.threads or 'engine default'}; vLLM servers: continuous batching, same environment. "
            f"transformers engine: one generation at a time. Machine: {os.cpu_count()} CPU cores ({cpu}), no GPU; "
            f"{machine_note()}{'; ' + args.note if args.note else ''}. Absolute numbers vary with the load: "
            f"read the ratios, measured in the same run.\n\n")
    text = head + table(results, peaks, starts)
    print(text)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


def merged_default_model() -> Path:
    """`facellm merge` of the default model (cached next to it): the folder both servers load."""
    from facellm.default_model import prepare_default_model

    src = Path(prepare_default_model(verbose=True))
    out = src.parent / (src.name + "-merged")
    stale = not (out / "lm" / "config.json").exists() or \
        (out / "lm" / "config.json").stat().st_mtime < (src / "model.safetensors").stat().st_mtime
    if stale:
        subprocess.run([sys.executable, "-m", "facellm.cli", "merge", str(src), str(out)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
