"""`facellm chat IMAGE...` (interactive, multi-turn, shows tool calls as they happen) and the agent path of
`facellm ask IMAGE... "question" --agent [--json]`.

Wiring in facellm/cli.py: ``from facellm.agent.cli import add_parser as add_chat_parser; add_chat_parser(sub)``,
and for ``ask``: ``add_agent_arguments(a)`` plus, at the top of ``cmd_ask``,
``if args.agent: return cmd_ask_agent(args)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from .loop import AgentConfig, AgentResult, FaceAgent


def add_agent_arguments(p: argparse.ArgumentParser, *, with_agent_flag: bool = True) -> None:
    """The agent's options (shared by `chat` and `ask --agent`)."""
    if with_agent_flag:
        p.add_argument("--agent", action="store_true",
                       help="answer as an agent: call the face tools, cite their results as evidence")
    p.add_argument("--gallery", default=None, metavar="DB",
                   help="enrolled-faces gallery (default: $FACELLM_HOME/gallery.sqlite if it exists)")
    p.add_argument("--no-model", action="store_true",
                   help="agent without a language model: rule-routed tools and template answers (fast)")
    p.add_argument("--endpoint", default=None, metavar="URL",
                   help="use an OpenAI-compatible server as the model, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--endpoint-model", default="facellm", help="model name at --endpoint")
    p.add_argument("--rules-first", action="store_true",
                   help="questions the rules recognise (count, smile, pose, age, who/same person, ...) skip the "
                        "model's tool choice: faster on a CPU")
    p.add_argument("--phrasing", choices=["template", "model"], default="template",
                   help="who words rule-routed answers (the model's wording is kept only if it agrees with the tools)")
    p.add_argument("--max-steps", type=int, default=4, help="model turns per question")
    p.add_argument("--tool-timeout", type=float, default=60.0, help="seconds per tool call")
    if not any(a.dest == "model" for a in p._actions):
        p.add_argument("--model", default=None, help="model folder (default: the default model from setup)")
    if not any(a.dest == "max_new_tokens" for a in p._actions):
        p.add_argument("--max-new-tokens", type=int, default=128)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    c = subparsers.add_parser("chat", help="chat with the face agent about one or more photos (multi-turn)")
    c.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s): image_1, image_2, ... in the chat")
    add_agent_arguments(c, with_agent_flag=False)
    c.add_argument("--json", action="store_true", help="print each answer as one JSON line (tool calls, evidence)")
    c.set_defaults(func=cmd_chat)
    return c


def build_agent(args: argparse.Namespace, images: list[str], on_event=None) -> FaceAgent:
    from facellm.tools.gallery import default_path
    from facellm.tools.image_io import as_loaded

    for path in images:  # a bad image fails before any model is loaded
        as_loaded(path)
    gallery = args.gallery
    if gallery is None and default_path().is_file():
        gallery = str(default_path())
    elif gallery is not None and not Path(gallery).is_file():
        raise ValueError(f"gallery {gallery} does not exist; enrol someone with `facellm gallery --db {gallery} "
                         "enroll NAME PHOTO`")
    config = AgentConfig(max_steps=args.max_steps, tool_timeout_s=args.tool_timeout,
                         mode="rules_first" if args.rules_first else "model_first", phrasing=args.phrasing)
    model = None
    if args.endpoint:
        from .chat_model import openai_chat_model

        model = openai_chat_model(args.endpoint, args.endpoint_model)
    elif not args.no_model:
        from transformers.utils import logging as hf_logging

        from facellm.default_model import default_model_dir, is_trained

        from .chat_model import FaceLLMChatModel

        hf_logging.disable_progress_bar()
        folder = args.model or default_model_dir()
        model = FaceLLMChatModel.from_pretrained(args.model, max_new_tokens=args.max_new_tokens)
        if not is_trained(folder):
            print(f"note: {folder} holds an untrained model; questions the rules recognise are still answered "
                  "from the tools", file=sys.stderr)
    return FaceAgent(model, images=images, gallery=gallery, config=config, on_event=on_event)


def _show_event(out: TextIO):
    def show(kind: str, p: dict) -> None:
        if kind == "tool_call":
            args = json.dumps(p["arguments"], ensure_ascii=False)
            print(f"  -> {p['name']}({args})" + ("  [rule-routed]" if p["origin"] == "rules" else ""), file=out,
                  flush=True)
        elif kind == "tool_result":
            if p["ok"]:
                r = p["result"] or {}
                n = f"{r['num_faces']} face(s)" if "num_faces" in r else (
                    ("same person" if r["same_person"] else "different people") if "same_person" in r else "done")
                print(f"  <- {p['name']}: {n} ({p['seconds']:.2f} s)", file=out, flush=True)
            else:
                print(f"  <- {p['name']}: error: {p['error']}", file=out, flush=True)
        elif kind == "tool_call_rejected":
            print(f"  !! rejected a malformed tool call: {p['error']}", file=out, flush=True)
    return show


def _print_result(r: AgentResult, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(r.to_dict(), ensure_ascii=False), file=out, flush=True)
        return
    print(r.answer, file=out)
    flags = [] if r.grounding.ok else [f"{len(r.grounding.contradictions)} claim(s) contradict the tools"]
    label = {"model": "answered by: model (it chose the tools)", "rules": "answered by: rules (keyword fallback)",
             "none": "answered by: " + ("model, no tool needed" if r.answer_source == "model" else "no tool")}[r.path]
    print(f"  [{label}; tools {r.tool_s:.2f} s, model {r.model_s:.2f} s"
          + (f"; {'; '.join(flags)}" if flags else "") + "]", file=out, flush=True)


def cmd_chat(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    stdin, out = stdin or sys.stdin, out or sys.stdout
    agent = build_agent(args, args.images, on_event=None if args.json else _show_event(out))
    interactive = stdin.isatty()
    ids = ", ".join(f"{i} = {p}" for i, p in zip(agent.image_ids, args.images))
    print(f"Images: {ids}. Ask about the faces; /image PATH adds a photo, /quit ends.", file=out, flush=True)
    while True:
        if interactive:
            print("you> ", end="", file=out, flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit", "/q"):
            break
        if line.startswith("/image "):
            try:
                print(f"added {agent.add_image(line[7:].strip())}", file=out, flush=True)
            except ValueError as e:
                print(f"error: {e}", file=out, flush=True)
            continue
        if not args.json:
            print(f"you: {line}" if not interactive else "", file=out, end="\n" if not interactive else "")
        _print_result(agent.ask(line), args.json, out)


def cmd_ask_agent(args: argparse.Namespace) -> AgentResult:
    """`facellm ask IMAGE... QUESTION --agent`: expects ``args.inputs`` (images then the question)."""
    *images, question = args.inputs
    if not images:
        raise ValueError('give at least one image before the question: facellm ask PHOTO.jpg "Is she smiling?" --agent')
    agent = build_agent(args, images, on_event=None if args.json else _show_event(sys.stderr))
    result = agent.ask(question)
    _print_result(result, args.json, sys.stdout)
    return result
