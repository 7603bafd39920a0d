"""Tool-call validity of a model on the held-out agent questions (the data's test split): does it emit a parseable
<tool_call> naming a real tool with valid arguments, and is it the tool the trace used?

    .venv/bin/python bench/tool_calls.py MODEL_DIR [--data ~/.cache/facellm/data/offline] [--n 20] [--free]
"""
import json, sys, time
from facellm.train.data import load_examples
from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.toolcall import parse_tool_calls
from facellm.tools.registry import openai_tools, get_tool
from transformers.utils import logging; logging.disable_progress_bar()
import argparse
ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--data", default="~/.cache/facellm/data/offline")
ap.add_argument("--n", type=int, default=20)
ap.add_argument("--free", action="store_true", help="no constrained decoding of the tool name")
args = ap.parse_args()
folder = args.model
model = FaceLLMForConditionalGeneration.from_pretrained(folder)
ex = [e for e in load_examples([args.data], ("test",)) if e.style == "agent"]
seen, items = set(), []
for e in ex:
    q = next(p["text"] for p in e.messages[0]["content"] if p.get("type") == "text")
    want = e.messages[1].get("tool_calls")
    if q in seen or not want:
        continue
    seen.add(q); items.append((e, q, want[0]["function"]["name"]))
items = items[: args.n]
valid = right = 0
t0 = time.time()
for e, q, want in items:
    extra = {"tool_names": None} if args.free else {}
    out = model.chat([e.messages[0]], tools=openai_tools(e.tools), max_new_tokens=48, **extra)
    p = parse_tool_calls(out)
    ok = bool(p.tool_calls) and not p.errors
    if ok:
        try:
            for c in p.tool_calls:
                get_tool(c.name).args_model.model_validate(c.arguments)
        except Exception:
            ok = False
    valid += ok
    right += ok and p.tool_calls[0].name == want
    print(f"{'OK ' if ok else 'BAD'} want={want:10s} q={q[:50]!r} -> {out[:90]!r}")
print(json.dumps({"items": len(items), "valid_tool_call_rate": valid / len(items), "right_tool_rate": right / len(items), "s": round(time.time()-t0,1)}))
