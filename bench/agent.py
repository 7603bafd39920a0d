"""Benchmark the face agent: time to answer typical questions, split into tool time and model time.

    .venv/bin/python bench/agent.py [--model default|none|FOLDER] [--repeat 3] [--max-new-tokens 96] [--mode model_first|rules_first]
                                    [--out bench/results/agent.md]

In-process (the server path comes with the /v1/faces/query route). Each question starts a new conversation
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
    text = "\n".join(head + rows + summary)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"(bench ran {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
