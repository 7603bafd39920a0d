"""Running a model over a benchmark: concurrent requests with a limit, the tool loop, and a response cache.

Every finished item is written to an SQLite cache keyed by (model identity, item content, setting) as soon
as it is done, so an interrupted run resumes where it stopped and a rerun with the same model costs nothing.
Failed requests are recorded in the results but not cached: a resumed run retries them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from facellm.tools.registry import ImageStore, ToolError, get_tool, openai_tools, result_json

from .items import EvalItem
from .prompts import build_messages, image_ids
from .responders import Reply, Responder

MAX_TOOL_ROUNDS = 3


class ResponseCache:
    """Transcripts by key in one SQLite file (safe across threads of one process; WAL for concurrent readers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, item TEXT, "
                         "setting TEXT, value TEXT NOT NULL, created REAL)")
        self._db.commit()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, item: str, setting: str, value: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                             (key, model, item, setting, json.dumps(value, ensure_ascii=False), time.time()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def item_fingerprint(item: EvalItem) -> str:
    """What the model was asked (an edited question is a new item for the cache)."""
    shown = [item.kind, item.question, item.options, item.images, item.context, item.prepend_text,
             item.postpend_text, item.expected_tools]
    return hashlib.sha256(json.dumps(shown, ensure_ascii=False).encode()).hexdigest()[:16]


def cache_key(responder: Responder, item: EvalItem, setting: str) -> str:
    return hashlib.sha256(json.dumps([responder.identity(), item.id, item_fingerprint(item), setting]).encode()
                          ).hexdigest()


# ------------------------------------------------------------------ one item


def _store_for(item: EvalItem) -> ImageStore:
    from facellm.tools.schema import FaceAnalysis

    ids = image_ids(item)
    analyses = {}
    if item.analysis is not None and ids:
        analyses[ids[0]] = FaceAnalysis.from_json(json.dumps(item.analysis))  # reuse what data_gen measured
    return ImageStore(dict(zip(ids, item.images)), analyses=analyses)


def _run_call(call: dict, store: ImageStore, offered: set[str]) -> dict:
    """Validate and run one tool call; the outcome says whether the tool and its arguments were valid."""
    name, args = call.get("name"), call.get("arguments")
    out = {"name": name, "arguments": args, "known_tool": name in offered, "valid_args": False, "error": None,
           "result": None}
    if name not in offered:
        out["error"] = f"unknown or not offered tool {name!r}"
        return out
    spec = get_tool(name)
    try:
        parsed = spec.validate(args)
        for key in ("image", "image_a", "image_b"):  # an image id must name an image of this conversation
            if hasattr(parsed, key) and getattr(parsed, key) not in store:
                raise ToolError(f"unknown image {getattr(parsed, key)!r}; the images are {', '.join(store.ids)}")
    except ToolError as e:
        out["error"] = str(e)
        return out
    out["valid_args"] = True
    try:
        out["result"] = spec.runner(parsed, store)
    except (ToolError, ValueError) as e:  # a valid call the tools could not carry out (no gallery, no face 7)
        out["error"] = str(e)
    return out


def run_item(responder: Responder, item: EvalItem, setting: str) -> dict:
    """Ask one item (with the tool loop for tool items); the transcript as a JSON-able dict."""
    t0 = time.perf_counter()
    messages = build_messages(item, setting, with_images=responder.with_images)
    tools = openai_tools() if item.kind == "tool" else None
    offered = {t["function"]["name"] for t in tools or []}
    turns: list[dict] = []
    calls: list[dict] = []
    evidence: list[dict] = []
    store = _store_for(item) if tools else None
    reply = Reply()
    for _ in range(MAX_TOOL_ROUNDS + 1):
        reply = responder.respond(item, messages, tools)
        turns.append(reply.to_dict())
        if not tools or not reply.tool_calls:
            break
        call_msgs = []
        for k, c in enumerate(reply.tool_calls):
            args = c.get("arguments")
            call_msgs.append({"id": f"call_{len(turns)}_{k}", "type": "function",
                              "function": {"name": c.get("name"), "arguments": args if isinstance(args, str)
                                           else json.dumps(args or {}, ensure_ascii=False)}})
        messages.append({"role": "assistant", "content": reply.content or None, "tool_calls": call_msgs})
        for k, c in enumerate(reply.tool_calls):
            outcome = _run_call(c, store, offered)
            calls.append(outcome)
            payload = outcome["result"] if outcome["result"] is not None else {"error": outcome["error"]}
            messages.append({"role": "tool", "tool_call_id": call_msgs[k]["id"], "content": result_json(payload)})
    if store is not None:
        # what the tools measured on each image they touched: the evidence the final answer must agree with
        from facellm.data_gen.evidence import model_labels

        touched = []
        for c in calls:
            if c["valid_args"] and c["result"] is not None and isinstance(c["arguments"], (dict, str)):
                args = c["arguments"] if isinstance(c["arguments"], dict) else json.loads(c["arguments"] or "{}")
                touched += [args[k] for k in ("image", "image_a", "image_b") if k in args]
        for image_id in dict.fromkeys(touched):
            try:
                evidence += [lb.model_dump() for lb in model_labels(store.analysis(image_id, ()))]
            except (ToolError, ValueError):
                pass
    final = reply.content if not reply.tool_calls else ""
    return {"item": item.id, "model": responder.name, "setting": setting, "turns": turns, "tool_calls": calls,
            "tool_evidence": evidence, "final": final, "error": None, "seconds": round(time.perf_counter() - t0, 3)}


# ------------------------------------------------------------------ many items


def run_responder(responder: Responder, items: Sequence[EvalItem], setting: str = "zero_shot", *,
                  cache: ResponseCache | None = None, concurrency: int = 4, progress: bool = True,
                  on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Transcripts for every item, in item order. Cached items are not asked again."""
    from tqdm import tqdm

    results: dict[str, dict] = {}
    todo: list[EvalItem] = []
    for it in items:
        hit = cache.get(cache_key(responder, it, setting)) if cache is not None else None
        if hit is not None:
            results[it.id] = {**hit, "model": responder.name, "cached": True}  # the name may have changed
        else:
            todo.append(it)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{responder.name} [{setting}]",
               unit="item", disable=not progress, leave=True)

    def one(it: EvalItem) -> dict:
        try:  # a system with its own loop (the agent) answers whole items
            out = responder.run_item(it, setting) if hasattr(responder, "run_item") else run_item(responder, it, setting)
        except Exception as e:  # a failed request is a wrong answer now and a retry on resume, not a crash
            return {"item": it.id, "model": responder.name, "setting": setting, "turns": [], "tool_calls": [],
                    "tool_evidence": [], "final": "", "error": f"{type(e).__name__}: {e}"[:500], "seconds": 0.0}
        if cache is not None:
            cache.put(cache_key(responder, it, setting), responder.name, it.id, setting, out)
        return out

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = {pool.submit(one, it): it for it in todo}
        for fut in as_completed(futures):
            out = fut.result()
            results[futures[fut].id] = {**out, "cached": False}
            if on_done is not None:
                on_done(out)
            bar.update(1)
    except BaseException:
        # Ctrl-C: drop the queued items (finished ones are already cached) instead of waiting for all of them
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    return [results[it.id] for it in items]
