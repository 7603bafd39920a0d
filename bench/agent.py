"""Benchmark the face agent: time to answer typical questions, split into tool time and model time.

    .venv/bin/python bench/agent.py [--model default|none|FOLDER] [--repeat 3] [--max-new-tokens 96] [--mode model_first|rules_first]
                                    [--server auto|none|URL] [--api-key KEY] [--out bench/results/agent.md]

In-process, then through the server (``--server auto``: a ``facellm serve --engine transformers`` started on
loopback with the same model, or ``--server URL`` of a running one): the same questions through
POST /v1/faces/query, photos sent as data: URIs, gallery questions with ``use_gallery``. The server's agent
uses the rules for ``--model none`` and the served model (``--query-model engine``) otherwise; it always runs
in ``rules_first`` mode. Each question starts a new conversation
(a fresh ImageStore: the photo is decoded and analysed again, as for a one-shot `facellm ask --agent`); the
models are loaded once, before timing. A follow-up question in the same conversation is timed separately
(it reuses the cached analysis). Prints a Markdown table; p50/p95 over all questions and repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from facellm.agent import FaceAgent
from facellm.agent.loop import AgentConfig
from facellm.tools.gallery import Gallery
from facellm.tools.photos import photo

QUESTIONS = [  # (photo, question): the typical questions
    ("group", "How many faces are in this photo?"),
    ("astronaut", "Is the person smiling?"),
    ("astronaut", "Which way is the head turned?"),
    ("grace_hopper", "How old does this person look?"),
    ("tom_hanks", "Who is this?"),
    ("astronaut", "Is this the same person as the enrolled one?"),
    ("group", "Who is on the left?"),
    ("group", "Who is smiling?"),
    # issue 17's common asks: the new tools (gaze, rank, passport, hair) and targeted faces
    ("group", "Which person looks the oldest?"),
    ("group", "Whose eyes are closed?"),
    ("grace_hopper", "Is this good enough for a passport photo?"),
    ("group", "Who is looking at the camera?"),
    ("group", "What colour is the hair of the woman on the right?"),
    ("group", "How old does the man at the top right look?"),
]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="none", help="'none' (rules + templates), 'default', or a model folder")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--mode", default="model_first", choices=["model_first", "rules_first"])
    ap.add_argument("--server", default="auto",
                    help="'auto' (start facellm serve on loopback), 'none' (in-process only), or a server URL")
    ap.add_argument("--api-key", default=None, help="API key of a --server URL")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = ap.parse_args()

    model = None
    if args.model != "none":
        from transformers.utils import logging as hf_logging

        from facellm.agent import FaceLLMChatModel

        hf_logging.disable_progress_bar()
        model = FaceLLMChatModel.from_pretrained(None if args.model == "default" else args.model,
                                                 max_new_tokens=args.max_new_tokens)
    gallery = Gallery(Path(tempfile.mkdtemp()) / "bench.sqlite")
    gallery.enroll("Dana Whitfield", photo("astronaut"))
    config = AgentConfig(max_steps=args.max_steps, mode=args.mode)
    FaceAgent(None, images=[photo("astronaut")], gallery=gallery).ask("Is the person smiling?")  # warm the tools

    rows, totals, tools, models, follow = [], [], [], [], []
    for name, q in QUESTIONS:
        per = []
        for _ in range(args.repeat):
            agent = FaceAgent(model, images=[photo(name)], gallery=gallery, config=config)
            r = agent.ask(q)
            per.append(r)
            totals.append(r.total_s)
            tools.append(r.tool_s)
            models.append(r.model_s)
            f = agent.ask("And how old do they look?")
            follow.append(f.total_s)
        med = statistics.median(x.total_s for x in per)
        r = per[0]
        rows.append(f"| {name} | {q} | {r.path} | {med:.2f} | {statistics.median(x.tool_s for x in per):.2f} | "
                    f"{statistics.median(x.model_s for x in per):.2f} | {r.answer[:70].replace('|', '/')}… |")
        print(rows[-1], file=sys.stderr, flush=True)
    head = [f"Agent, in-process, model: {args.model}, mode {args.mode}; {args.repeat} repeats; a new conversation per question.", "",
            "| photo | question | path | total s (median) | tools s | model s | answer |",
            "|---|---|---|---|---|---|---|"]
    summary = ["", "| | p50 s | p95 s |", "|---|---|---|",
               f"| total | {pct(totals, .5):.2f} | {pct(totals, .95):.2f} |",
               f"| tools | {pct(tools, .5):.2f} | {pct(tools, .95):.2f} |",
               f"| model | {pct(models, .5):.2f} | {pct(models, .95):.2f} |",
               f"| follow-up (cached analysis) | {pct(follow, .5):.2f} | {pct(follow, .95):.2f} |"]
    if model is not None:  # the same questions rules-only (no model), in the same run: what the model costs
        rules_t = []
        for name, q in QUESTIONS:
            for _ in range(args.repeat):
                rules_t.append(FaceAgent(None, images=[photo(name)], gallery=gallery).ask(q).total_s)
        paths = {p: sum(1 for r in rows if f"| {p} |" in r) for p in ("model", "rules", "none")}
        summary += ["", f"Rules only (no model), same questions, same run: p50 {pct(rules_t, .5):.2f} s, p95 "
                        f"{pct(rules_t, .95):.2f} s; model first: p50 {pct(totals, .5):.2f} s "
                        f"(ratio {pct(totals, .5) / max(pct(rules_t, .5), 1e-9):.1f}x). Answering path with the "
                        f"model: {paths}."]
    if args.server != "none":
        summary += server_section(args, gallery.path)
    text = "\n".join(head + rows + summary)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


# ------------------------------------------------------------------ the server path (/v1/faces/query)


def _data_uri(path: Path) -> str:
    import base64

    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _start_server(args, gallery_db: Path | None):
    """``facellm serve`` on a free loopback port; returns (process, base URL, log file)."""
    import socket
    import subprocess

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "facellm.serve.cli", "--engine", "transformers", "--port", str(port),
           "--query-model", "rules" if args.model == "none" else "engine"]
    if args.model not in ("none", "default"):
        cmd += ["--model", args.model]
    if gallery_db is not None:
        cmd += ["--gallery", str(gallery_db)]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited; its log: {log.name}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base, log.name
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the server did not start in 600 s; its log: {log.name}")


def server_section(args, gallery_db: Path | None) -> list[str]:
    """p50/p95 time to answer through POST /v1/faces/query (client-side, so HTTP and JSON included)."""
    import signal

    import httpx

    proc = None
    if args.server == "auto":
        print("starting facellm serve for the server path...", file=sys.stderr, flush=True)
        proc, base, log = _start_server(args, gallery_db)
    else:
        base = args.server.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    totals, server_tools, follow = [], [], []
    lines = []
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            def ask(body: dict) -> tuple[dict, float]:
                t0 = time.perf_counter()
                r = client.post("/v1/faces/query", json=body)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"/v1/faces/query answered {r.status_code}: {r.text[:300]}")
                return r.json(), dt

            ask({"images": [_data_uri(photo("astronaut"))], "question": "Is the person smiling?"})  # warm
            for name, q in QUESTIONS:
                per = []
                for _ in range(args.repeat):
                    body, dt = ask({"images": [_data_uri(photo(name))], "question": q,
                                    "use_gallery": gallery_db is not None and args.server == "auto"})
                    per.append(dt)
                    totals.append(dt)
                    server_tools.append(body["timings_s"]["tools"])
                    _, dt2 = ask({"conversation_id": body["conversation_id"], "question": "And how old do they look?"})
                    follow.append(dt2)
                lines.append(f"| {name} | {q} | {body['path']} | {statistics.median(per):.2f} | "
                             f"{body['answer'][:70].replace('|', '/')}… |")
                print(lines[-1], file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    where = "a facellm serve started for this run" if args.server == "auto" else base
    return ["", f"Through the server: POST /v1/faces/query on {where} (time measured by the client: HTTP, JSON "
                "and the data: URI upload included).", "",
            "| photo | question | path | total s (median) | answer |", "|---|---|---|---|---|", *lines, "",
            "| server path | p50 s | p95 s |", "|---|---|---|",
            f"| total | {pct(totals, .5):.2f} | {pct(totals, .95):.2f} |",
            f"| tools (server-side) | {pct(server_tools, .5):.2f} | {pct(server_tools, .95):.2f} |",
            f"| follow-up (same conversation) | {pct(follow, .5):.2f} | {pct(follow, .95):.2f} |"]


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"(bench ran {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
