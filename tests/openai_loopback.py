"""A real OpenAI-compatible HTTP server on loopback for the eval tests (not a test module itself).

``serve(policy)`` starts a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 that answers ``GET /v1/models`` and
``POST /v1/chat/completions`` the way OpenAI's API does; ``policy(body) -> {"content", "tool_calls"}``
decides the assistant message. ``tools_policy`` is a real model of its own: the tools-only agent (face
tools + fixed rules) reading the request's messages, data-URI images and options.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Policy = Callable[[dict], dict]


@contextmanager
def serve(policy: Policy, model: str = "loopback-model") -> Iterator[str]:
    """Yields the base URL (``http://127.0.0.1:PORT/v1``); records each request body in ``server.requests``."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet test output
            pass

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                              "owned_by": "test"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found"}})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            requests.append(body)
            try:
                out = policy(body)
            except Exception as e:  # a policy bug is a 500, as a real server would answer
                self._send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})
                return
            calls = [{"id": f"call_{k}", "type": "function",
                      "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                     for k, c in enumerate(out.get("tool_calls") or [])]
            message = {"role": "assistant", "content": out.get("content")}
            if calls:
                message["tool_calls"] = calls
            self._send(200, {"id": f"chatcmpl-{len(requests)}", "object": "chat.completion",
                             "created": int(time.time()), "model": body.get("model", model),
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": "tool_calls" if calls else "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = requests  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        serve.last_requests = requests  # type: ignore[attr-defined]
        yield url
    finally:
        server.shutdown()
        server.server_close()


def _text_and_images(messages: list[dict], folder: Path) -> tuple[str, list[str]]:
    text, images = "", []
    for m in messages:
        if m["role"] != "user":
            continue
        content = m["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for p in parts:
            if p["type"] == "text":
                text += p["text"] + "\n"
            elif p["type"] == "image_url":
                url = p["image_url"]["url"]
                head, _, payload = url.partition(",")
                ext = head.split("/")[1].split(";")[0] if "/" in head else "png"
                f = folder / f"img{len(images)}_{abs(hash(payload)) % 10 ** 8}.{ext}"
                f.write_bytes(base64.b64decode(payload))
                images.append(str(f))
    return text, images


_ATTRIBUTE_WORDS = ((r"woman or a man", "gender"), (r"age group", "age_group"), (r"how old", "age"),
                    (r"facial expression", "expression"))


def tools_policy() -> Policy:
    """The tools-only agent as a served model: the request's question, options and images -> its answer."""
    from facellm.eval.items import EvalItem
    from facellm.eval.tools_agent import ToolsOnlyAgent

    agent = ToolsOnlyAgent()
    folder = Path(tempfile.mkdtemp(prefix="loopback-"))

    def policy(body: dict) -> dict:
        text, images = _text_and_images(body["messages"], folder)
        options = re.findall(r"^\(([A-Z])\) (.*)$", text, re.M)
        question = text.split("\n(A)")[0].strip().splitlines()[-1] if options else text.strip()
        if body.get("tools"):
            item = EvalItem(id="req", kind="tool", question=question, images=images, expected_tools=["analyze"])
        elif options:
            item = EvalItem(id="req", kind="mc", question=question, images=images, options=[o for _, o in options],
                            answer_letter="A", meta={"text_only": not images})
        elif attr := next((a for pattern, a in _ATTRIBUTE_WORDS if re.search(pattern, question.lower())), None):
            item = EvalItem(id="req", kind="attribute", attribute=attr, question=question, images=images)
        else:
            item = EvalItem(id="req", kind="open", question=question, images=images)
        reply = agent.respond(item, body["messages"], body.get("tools"))
        return {"content": reply.content or None, "tool_calls": reply.tool_calls}

    return policy
