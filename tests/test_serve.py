"""The OpenAI-compatible server with the transformers engine: real servers on loopback (subprocesses), real
photos through the face tools, called with the official openai client, LangChain's ChatOpenAI and httpx.

Two tiny FaceLLM folders: one *taught* two answers (so the tests can check exact text and a real tool call
coming back through the API), one left random (it rambles until max_tokens: long requests for the queue,
timeout and shutdown tests).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from facellm.serve.output import OutputTracker
from facellm.serve.prompt import prepare
from facellm.serve.protocol import ChatCompletionRequest
from facellm.serve.settings import ServeSettings
from facellm.tools.photos import photo
from tiny_facellm import teach, tiny_model

PHOTOS = photo("astronaut").parent
TOOLS = [{"type": "function", "function": {"name": "detect", "description": "find the faces in an image",
                                           "parameters": {"type": "object",
                                                          "properties": {"image": {"type": "string"}}}}}]
TOOL_ANSWER = '<tool_call>\n{"name": "detect", "arguments": {"image": "image_1"}}\n</tool_call>'
KEY = "test-key"


def image_question(url: str, question: str = "How many people?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def data_uri(path: Path) -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


TAUGHT = [  # (request, answer): the prompts go through the server's own prompt builder, as served
    (dict(messages=image_question(str(photo("astronaut")))), "One person."),
    (dict(messages=[{"role": "user", "content": "Find the faces."}], tools=TOOLS), TOOL_ANSWER),
]


def build_taught_model(root: Path, steps: int = 100, hidden: int = 32, taught: list | None = None) -> Path:
    """A tiny FaceLLM whose LM learned the ``taught`` answers (default TAUGHT; ~10 s); saved with its LM in lm/."""
    model = tiny_model(root, freeze_lm=False, hidden=hidden)
    settings = ServeSettings(image_dirs=[PHOTOS])
    batches = []
    for req, answer in taught or TAUGHT:
        msgs = prepare(ChatCompletionRequest(**req), settings).messages
        batches.append(model.processor(msgs + [{"role": "assistant", "content": answer}]))
    return teach(model, batches, steps, hidden, root / "taught")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m facellm.serve.cli ...`` (or ``command``) on a free loopback port; waits until /health answers."""

    def __init__(self, args: list[str], startup: float = 120.0, env: dict | None = None,
                 command: list[str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = command or [sys.executable, "-m", "facellm.serve.cli"]
        self.proc = subprocess.Popen([*command, "--port", str(self.port), *args],
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + startup
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.output))
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def taught_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return build_taught_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_random")
    return tiny_model(root, seed=3).save_pretrained(root / "random")


@pytest.fixture(scope="module")
def server(taught_dir):
    srv = ServerProcess(["--engine", "transformers", "--model", str(taught_dir), "--api-key", KEY,
                         "--image-dir", str(PHOTOS), "--max-image-mb", "1"])
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)


# ---------------------------------------------------------------- the openai client


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["facellm"]
    health = httpx.get(server.base + "/health").json()
    assert health["status"] == "ok" and health["engine"] == "transformers"


def test_openai_client_answers_about_a_real_photo(client):
    # server-side path inside the allowed folder: the taught answer comes back exactly
    r = client.chat.completions.create(model="facellm", messages=image_question(str(photo("astronaut"))),
                                       max_tokens=20)
    assert r.choices[0].message.content == "One person."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 64 + 10  # the 8x8 patch tokens and one face's 10 tokens are in the prompt
    # the same photo as a data URI gives the same prompt, hence the same answer
    r2 = client.chat.completions.create(model="facellm", max_tokens=20,
                                        messages=image_question(data_uri(photo("astronaut"))))
    assert r2.choices[0].message.content == "One person." and r2.usage.prompt_tokens == r.usage.prompt_tokens


def test_group_photo_has_more_face_tokens(client):
    one = client.chat.completions.create(model="facellm", max_tokens=3,
                                         messages=image_question(str(photo("astronaut"))))
    group = client.chat.completions.create(model="facellm", max_tokens=3, messages=image_question(str(photo("group"))))
    # 4 faces shown (max_faces) x 10 face tokens + their "Face i (where):" labels + the "6 faces found" note
    assert group.usage.prompt_tokens - one.usage.prompt_tokens > 3 * 10


def test_streaming_matches_the_plain_answer(client):
    stream = client.chat.completions.create(model="facellm", messages=image_question(str(photo("astronaut"))),
                                            max_tokens=20, stream=True, stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            reasons.append(c.finish_reason)
    assert "".join(pieces) == "One person."
    assert len([p for p in pieces if p]) > 1  # it really arrived in pieces
    assert reasons[-1] == "stop" and usage is not None and usage.completion_tokens >= 2


def test_tool_call_comes_back_as_tool_calls(client):
    r = client.chat.completions.create(model="facellm", messages=[{"role": "user", "content": "Find the faces."}],
                                       tools=TOOLS, max_tokens=100)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "detect" and json.loads(call.function.arguments) == {"image": "image_1"}
    assert not choice.message.content
    # streamed: the call arrives as a tool_calls delta, never as text
    chunks = list(client.chat.completions.create(model="facellm", tools=TOOLS, max_tokens=100, stream=True,
                                                 messages=[{"role": "user", "content": "Find the faces."}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert "<tool_call>" not in text and calls[0].function.name == "detect"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_results_and_history_are_accepted(client):
    msgs = [{"role": "user", "content": "Find the faces."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "detect", "arguments": '{"image": "image_1"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"num_faces": 1}'}]
    r = client.chat.completions.create(model="facellm", messages=msgs, tools=TOOLS, max_tokens=5)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_bad_requests_are_refused_clearly(server, client):
    import openai

    with pytest.raises(openai.BadRequestError, match="outside the folders"):
        client.chat.completions.create(model="facellm", messages=image_question("/etc/hostname"))
    with pytest.raises(openai.BadRequestError, match="allow-listed"):
        client.chat.completions.create(model="facellm", messages=image_question("https://example.com/a.jpg"))
    with pytest.raises(openai.BadRequestError, match="limit"):  # padded past the 1 MB image limit
        client.chat.completions.create(model="facellm", messages=image_question(data_uri(photo("group")) + "A" * 2 * 2**20))
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(model="facellm", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(server.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   content=b"x" * (21 * 2**20))
    assert r.status_code == 413
    r = httpx.post(server.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def _png(tmp: Path, size: tuple[int, int], mode: str) -> str:
    """A data URI of a blank PNG of ``size`` pixels: tiny to send, huge to decode."""
    from PIL import Image

    path = tmp / f"blank_{size[0]}x{size[1]}.png"
    Image.new(mode, size).save(path, optimize=False)
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_errors_share_one_vocabulary(server, tmp_path):
    from facellm.serve.errors import CODES

    auth = {"Authorization": f"Bearer {KEY}"}

    def error(body: dict | None = None, path: str = "/v1/chat/completions", **kw) -> tuple[int, dict]:
        r = httpx.post(server.base + path, json=body, headers=auth, timeout=120, **kw) if body is not None else \
            httpx.get(server.base + path, headers=auth, timeout=30, **kw)
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"} and e["code"] in CODES, e
        assert e["type"] == CODES[e["code"]][1]
        return r.status_code, e

    nine = [{"type": "image_url", "image_url": {"url": str(photo("astronaut"))}}] * 9
    status, e = error({"messages": [{"role": "user", "content": nine}]})
    assert (status, e["code"], e["param"]) == (400, "too_many_images", "messages") and "at most 8" in e["message"]
    status, e = error({"messages": image_question("/etc/hostname")})
    assert (status, e["code"]) == (400, "invalid_image")
    # 30 MP: over the server's 25 MP limit, and the message quotes that limit, not Pillow's
    status, e = error({"messages": image_question(_png(tmp_path, (6000, 5000), "L"))})
    assert (status, e["code"]) == (400, "invalid_image") and "25,000,000 pixels" in e["message"], e
    assert "6000x5000" in e["message"]
    # 200 MP: past Pillow's own decompression-bomb guard (178 M): still the server's limit in the message
    status, e = error({"messages": image_question(_png(tmp_path, (20000, 10000), "1"))})
    assert (status, e["code"]) == (400, "invalid_image") and "25,000,000 pixels" in e["message"], e
    assert "178" not in e["message"] and "bomb" not in e["message"].lower()
    status, e = error({"messages": []})
    assert (status, e["code"]) == (400, "invalid_request")
    status, e = error({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6})
    assert (status, e["code"], e["param"]) == (400, "max_tokens_too_large", "max_tokens")
    status, e = error({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert (status, e["code"]) == (404, "model_not_found")
    status, e = error(path="/v1/nothing-here")
    assert (status, e["code"]) == (404, "not_found")
    status, e = error(path="/favicon.ico/x")
    assert (status, e["code"]) == (404, "not_found")
    status, e = error(path="/v1/chat/completions")
    assert (status, e["code"]) == (405, "method_not_allowed")
    r = httpx.get(server.base + "/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_each_request_is_logged_once_without_secrets(server):
    before = len(server.output)
    httpx.get(server.base + "/v1/models?probe=1", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    httpx.post(server.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
               json={"messages": image_question(data_uri(photo("astronaut"))), "max_tokens": 3, "stream": True})
    time.sleep(0.5)  # the log line is written once the response is complete
    lines = server.output[before:]
    assert any(" GET /v1/models 200 " in ln for ln in lines), lines
    assert any(" POST /v1/chat/completions 200 " in ln for ln in lines), lines
    log = "".join(server.output)
    assert KEY not in log and "probe" not in log and "base64" not in log
    assert all(ln.rstrip().endswith("s") for ln in lines if "/v1/" in ln)  # each ends with its duration


def test_api_key_is_required(server):
    from openai import AuthenticationError, OpenAI

    wrong = OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(AuthenticationError):
        wrong.models.list()
    assert httpx.get(server.base + "/health").status_code == 200  # health and metrics stay open


def test_langchain_chat_openai(server):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.base + "/v1", api_key=KEY, model="facellm", temperature=0, max_tokens=20,
                     max_retries=0)
    msg = HumanMessage(content=[{"type": "image_url", "image_url": {"url": data_uri(photo("astronaut"))}},
                                {"type": "text", "text": "How many people?"}])
    assert llm.invoke([msg]).content == "One person."
    assert "".join(c.content for c in llm.stream([msg])) == "One person."
    ai = ChatOpenAI(base_url=server.base + "/v1", api_key=KEY, model="facellm", temperature=0, max_tokens=100,
                    max_retries=0).bind_tools(TOOLS).invoke("Find the faces.")
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "detect" and ai.tool_calls[0]["args"] == {"image": "image_1"}


def test_metrics_count_requests(server):
    text = httpx.get(server.base + "/metrics").text
    assert 'facellm_requests_total{status="200"}' in text
    assert "facellm_time_to_first_token_seconds_count" in text


# ---------------------------------------------------------------- limits, timeouts, shutdown


def _long_request(base: str, max_tokens: int, results: list, stream: bool = False) -> None:
    """Appends (status, body text, headers); a connection that failed appends (0, error, {})."""
    body = {"model": "facellm", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Describe the image."}]}
    try:
        with httpx.Client(timeout=120) as c:
            if stream:
                with c.stream("POST", base + "/v1/chat/completions", json=body) as r:
                    results.append((r.status_code, "".join(r.iter_text()), r.headers))
            else:
                r = c.post(base + "/v1/chat/completions", json=body)
                results.append((r.status_code, r.text, r.headers))
    except httpx.HTTPError as err:
        results.append((0, repr(err), {}))


def test_bounded_queue_answers_429_and_timeouts_504(random_dir):
    # 20000 tokens take the tiny model >= ~15 s even on a fast, quiet machine: far past the 2 s limit, which is
    # still long enough for a one-token request on a busy one
    srv = ServerProcess(["--engine", "transformers", "--model", str(random_dir), "--max-concurrency", "1",
                         "--max-queue", "1", "--timeout", "2", "--max-tokens-limit", "20000"])
    try:
        results: list = []
        threads = [threading.Thread(target=_long_request, args=(srv.base, 20000, results)) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.1)  # in order: running, waiting, refused
        for t in threads:
            t.join()
        codes = sorted(code for code, _, _ in results)
        assert codes.count(429) == 1, results
        assert 504 in codes  # the random model rambles past the 2 s limit
        refused, headers = next((json.loads(body), h) for code, body, h in results if code == 429)
        assert refused["error"]["code"] == "rate_limit_exceeded" and refused["error"]["type"] == "rate_limit_error"
        assert int(headers["retry-after"]) >= 1  # tells the client when to come back
        timed_out = next(json.loads(body) for code, body, _ in results if code == 504)
        assert timed_out["error"]["code"] == "timeout"
        # the slots are free again, and a short request still goes through
        health = httpx.get(srv.base + "/health", timeout=30).json()
        assert (health["running"], health["waiting"]) == (0, 0), health
        ok: list = []
        _long_request(srv.base, 1, ok)
        assert ok[-1][0] == 200, ok
    finally:
        assert srv.stop() == 0


def test_sigterm_finishes_in_flight_requests(random_dir):
    srv = ServerProcess(["--engine", "transformers", "--model", str(random_dir)])
    results: list = []
    t = threading.Thread(target=_long_request, args=(srv.base, 100, results, True))  # ~10 s on a busy machine
    t.start()
    time.sleep(1.0)  # the request is generating
    srv.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert srv.proc.wait(60) == 0
    code, body, _ = results[0]
    assert code == 200 and body.rstrip().endswith("data: [DONE]")
    assert '"finish_reason": "length"' in body  # it ran to its end, not cut off
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.base + "/health", timeout=2)


def test_sigterm_under_load_drains_within_the_timeout(random_dir):
    """One request generating (it would run past the timeout), three waiting for the slot: SIGTERM. The server is
    gone within --timeout, and every client got a whole answer or a well-formed error, none an empty body."""
    from facellm.serve.errors import CODES

    timeout = 4.0
    srv = ServerProcess(["--engine", "transformers", "--model", str(random_dir), "--max-concurrency", "1",
                         "--max-queue", "8", "--timeout", str(timeout), "--max-tokens-limit", "100000"])
    results: list = []
    threads = [threading.Thread(target=_long_request, args=(srv.base, 100000, results, i == 0)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.3)
    time.sleep(0.5)
    sent = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout + 30)
    answered = time.monotonic() - sent
    assert srv.proc.wait(timeout + 30) == 0
    gone = time.monotonic() - sent
    log = "".join(srv.output)
    # every client has its answer within the timeout; the process then exits (tearing torch down takes a moment)
    assert answered < timeout + 2, f"the last client was answered {answered:.1f} s after SIGTERM\n{log}"
    assert gone < timeout + 15, f"the server took {gone:.1f} s to exit\n{log}"
    assert len(results) == 4, results
    for code, body, headers in results:
        assert body.strip(), (code, headers)  # never an empty body
        if code == 200:  # the stream: ends in order, with its timeout as a typed error event
            events = [json.loads(ln[6:]) for ln in body.splitlines() if ln.startswith("data: {")]
            assert events and ("error" in events[-1] or body.rstrip().endswith("data: [DONE]")), body[-300:]
            if "error" in events[-1]:
                assert events[-1]["error"]["code"] == "timeout"
        else:
            error = json.loads(body)["error"]
            assert error["code"] in CODES and (code, error["code"]) in ((503, "shutting_down"), (504, "timeout"))
            if code == 503:
                assert int(headers["retry-after"]) >= 1
    assert sum(code == 503 for code, _, _ in results) >= 2, results  # the waiting were turned away at once
    assert "CancelledError" not in log and "graceful shutdown exceeded" not in log, log[-2000:]


# ---------------------------------------------------------------- output handling (no server)


def test_stop_strings_are_cut_even_across_pieces():
    t = OutputTracker(["END"], tools=False)
    shown = t.add("Hello E") + t.add("N") + t.add("D and more")
    assert shown == "Hello " and t.stopped and t.final().content == "Hello "


def test_tool_call_text_is_held_back_and_parsed():
    t = OutputTracker([], tools=True)
    shown = "".join(t.add(p) for p in ["Let me look. <tool", "_call>\n{\"name\": \"pose\", ", "\"arguments\": {}}",
                                       "\n</tool_call>"])
    assert shown == "Let me look. " and t.flush() == ""
    ans = t.final()
    assert ans.tool_calls[0]["function"]["name"] == "pose" and ans.content == "Let me look."
