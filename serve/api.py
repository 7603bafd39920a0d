"""The OpenAI-compatible HTTP front end (FastAPI), the same for every engine.

Routes: POST /v1/chat/completions (streaming with SSE, images, tools), GET /v1/models, GET /health,
GET /metrics (Prometheus text). Later features (the face-query API, the chat page) add routers to the app
returned by ``create_app``; they find the engine and settings on ``app.state``.

Admission: at most ``max_concurrency`` requests run; up to ``max_queue`` more wait; beyond that: 429 with
``Retry-After``. Every admitted request has ``request_timeout`` seconds until its last token (504, or an error
event mid-stream). API keys: ``Authorization: Bearer <key>`` on /v1/* when keys are configured (401 otherwise).
Errors: one vocabulary on every route (serve/errors.py). One log line per request (method, path, status,
seconds; never a body, an image or a key) on the ``facellm.serve.access`` logger.
Identity policy: a chat completion names a person only when an ``identify`` result in the conversation matched
them in a gallery; otherwise the answer is a refusal (``facellm.agent.policy``, the agent's own policy). A
streamed answer is screened before each piece is sent, so a name never reaches the client.
Shutdown (SIGTERM / Ctrl-C), ``begin_drain``: requests still waiting for a slot get 503 (with ``Retry-After``)
at once, running ones keep at most ``request_timeout`` from that moment (then a well-formed 504), so the server
is gone within the timeout; uvicorn stops accepting connections meanwhile; then the engine is shut down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from facellm.agent import policy

from .engines import Delta, Engine, EngineError
from .errors import APIError
from .images import ImageRefused
from .output import OutputTracker
from .prompt import BadRequest, prepare, sampling
from .protocol import ChatCompletionRequest
from .settings import ServeSettings

M = TypeVar("M", bound=BaseModel)


ACCESS_LOG = logging.getLogger("facellm.serve.access")


def api_key_of(request: Request) -> str:
    """The bearer token of a request ("" without one)."""
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def owner_of(request: Request) -> str | None:
    """Who a conversation belongs to: a digest of the request's API key (the key itself is kept nowhere);
    None when the server has no keys (then there is no one to tell apart)."""
    if not request.app.state.settings.api_keys:
        return None
    return hashlib.sha256(api_key_of(request).encode()).hexdigest()


async def read_body(request: Request, model: type[M], max_bytes: int) -> M:
    """The request's JSON body as ``model``: 413 past ``max_bytes``, 400 naming the first invalid field."""
    body = b""
    async for chunk in request.stream():  # chunked uploads have no content-length: count as we read
        body += chunk
        if len(body) > max_bytes:
            raise APIError("request_too_large", f"the request is larger than the server's limit of {max_bytes} "
                                                "bytes")
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise APIError("invalid_request", f"invalid request: {where}: {first.get('msg')}", param=where or None) \
            from None


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps in one process do not collide)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("facellm_requests", "Chat completion requests by outcome", ["status"], registry=r)
        self.in_flight = Gauge("facellm_requests_running", "Requests generating now", registry=r)
        self.waiting = Gauge("facellm_requests_waiting", "Requests waiting for a slot", registry=r)
        self.latency = Histogram("facellm_request_seconds", "Request latency (admission to last token)",
                                 registry=r, buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
        self.ttft = Histogram("facellm_time_to_first_token_seconds", "Time to the first generated token",
                              registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32))
        self.prompt_tokens = Counter("facellm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("facellm_completion_tokens", "Tokens generated", registry=r)


@dataclass
class Admission:
    """A bounded waiting room in front of ``max_concurrency`` slots; ``close`` (shutdown) turns the waiting away."""

    slots: int
    max_queue: int
    retry_after: float = 1.0  # seconds a refused client is told to wait
    running: int = 0
    waiting: int = 0
    closed: bool = False
    _sem: asyncio.Semaphore | None = field(default=None, repr=False)
    _closed: asyncio.Event | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.slots)
        self._closed = asyncio.Event()

    def _shutting_down(self) -> APIError:
        return APIError("shutting_down", "the server is shutting down; retry on another instance or later",
                        retry_after=self.retry_after)

    async def enter(self) -> None:
        if self.closed:
            raise self._shutting_down()
        if self.running >= self.slots and self.waiting >= self.max_queue:
            raise APIError("rate_limit_exceeded", f"the server is busy ({self.running} running, {self.waiting} "
                           "waiting); retry later", retry_after=self.retry_after)
        self.waiting += 1
        try:
            acquire = asyncio.ensure_future(self._sem.acquire())
            closed = asyncio.ensure_future(self._closed.wait())
            try:
                await asyncio.wait({acquire, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                if not acquire.done():
                    acquire.cancel()
            if acquire.cancelled() or not acquire.done():
                raise self._shutting_down()
            if self.closed:  # got a slot and the shutdown at once: give the slot back
                self._sem.release()
                raise self._shutting_down()
        finally:
            self.waiting -= 1
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._sem.release()

    def close(self) -> None:
        self.closed = True
        self._closed.set()


@dataclass
class Drain:
    """Shutdown in progress: from ``start`` on, every request has at most ``timeout`` seconds left."""

    deadline: float = math.inf

    @property
    def active(self) -> bool:
        return self.deadline < math.inf

    def cap(self, deadline: float) -> float:
        return min(deadline, self.deadline)


class AccessLog:
    """ASGI middleware: one line per HTTP request when its response is complete (streams too): method, path,
    status, seconds. Never the query string, a header, a body or an image."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        status = [0]

        async def send_logged(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._line(scope, status[0], start)
                status[0] = -1  # logged

        try:
            await self.app(scope, receive, send_logged)
        finally:
            if status[0] != -1:  # the client went away, or the app failed before a whole response
                self._line(scope, status[0] or 499, start)

    @staticmethod
    def _line(scope, status: int, start: float) -> None:
        path = "".join(c if c.isprintable() else "?" for c in scope.get("path", ""))[:120]
        ACCESS_LOG.info("%s %s %d %.3fs", scope.get("method", "?"), path, status, time.monotonic() - start)


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _question_and_matched(req: ChatCompletionRequest) -> tuple[str, set[str]]:
    """The last user turn's text (the question the answer is screened against) and the names an ``identify``
    result in the conversation matched (the only names the answer may use)."""
    def text(content: Any) -> str:
        if isinstance(content, str):
            return content
        return " ".join(p.get("text") or "" for p in content or [] if isinstance(p, dict) and p.get("type") == "text")

    users = [m for m in req.messages if m.role == "user"]
    question = text(users[-1].content) if users else ""
    matched = policy.matched_in_tool_results(text(m.content) for m in req.messages if m.role == "tool")
    return question, matched


def create_app(engine: Engine, settings: ServeSettings | None = None, *, start_engine: bool = True) -> FastAPI:
    settings = settings or ServeSettings()
    metrics = Metrics()
    drain = Drain()

    def begin_drain() -> None:
        """Shutdown starts (call on the event loop): the waiting are turned away, the running get the timeout."""
        if drain.active:
            return
        drain.deadline = time.monotonic() + settings.request_timeout
        adm = getattr(app.state, "admission", None)
        if adm is not None:
            adm.close()

    def request_drain() -> None:
        """``begin_drain`` from a signal handler (or another thread): scheduled onto the event loop."""
        loop = getattr(app.state, "loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(begin_drain)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loop = asyncio.get_running_loop()
        if start_engine:
            await engine.start()
        # a refused client retries after about one request's time (capped: a minute is long enough to wait)
        app.state.admission = Admission(settings.max_concurrency, settings.max_queue,
                                        retry_after=min(60.0, max(1.0, settings.request_timeout / 4)))
        app.state.ready = True
        yield
        begin_drain()
        query = getattr(app.state, "query", None)
        if query is not None:  # the agents' model turns still running (cut off by the shutdown) end in the engine
            query.close()
        await engine.shutdown()

    app = FastAPI(title="FaceLLM", lifespan=lifespan)
    app.state.engine, app.state.settings, app.state.metrics, app.state.ready = engine, settings, metrics, False
    app.state.drain, app.state.begin_drain, app.state.request_drain = drain, begin_drain, request_drain
    app.add_middleware(AccessLog)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):  # unknown routes, wrong methods
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "invalid_request")
        message = (f"{request.method} {request.url.path[:120]} is not a route of this server" if err.status_code
                   == 404 else str(err.detail))
        return APIError(code, message, status=err.status_code).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        first = (err.errors() or [{}])[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return APIError("invalid_request", f"invalid request: {where}: {first.get('msg')}").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        return APIError("server_error", f"internal error: {type(err).__name__}").response()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if path.startswith("/v1/"):
            if settings.api_keys and api_key_of(request) not in settings.api_keys:
                metrics.requests.labels("401").inc()
                return APIError("invalid_api_key", "missing or wrong API key (send Authorization: Bearer <key>)") \
                    .response()
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > settings.max_request_bytes:
                metrics.requests.labels("413").inc()
                return APIError("request_too_large", f"the request is larger than the server's limit of "
                                                     f"{settings.max_request_bytes} bytes").response()
            if drain.active:
                return APIError("shutting_down", "the server is shutting down; retry later",
                                retry_after=app.state.admission.retry_after).response()
        return await call_next(request)

    @app.get("/health")
    async def health():
        ok = app.state.ready and not drain.active
        adm = getattr(app.state, "admission", None)
        return JSONResponse({"status": "ok" if ok else "unavailable", "engine": engine.name,
                             "model": settings.model_name, "running": adm.running if adm else 0,
                             "waiting": adm.waiting if adm else 0}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "facellm", "root": str(engine.model_dir)}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        status = "200"
        try:
            req = await read_body(request, ChatCompletionRequest, settings.max_request_bytes)
            if req.model not in (None, settings.model_name):
                raise APIError("model_not_found", f"model {req.model!r} is not served here; this server serves "
                                                  f"{settings.model_name!r}", param="model")
            try:
                loop = asyncio.get_running_loop()  # decoding images and parsing can take a moment: off the loop
                prompt = await loop.run_in_executor(None, prepare, req, settings)
                params = sampling(req, settings)
            except BadRequest as err:
                raise APIError(err.code, str(err), param=err.param) from None
            except ImageRefused as err:
                raise APIError(err.code, str(err), param="messages") from None
            adm: Admission = app.state.admission
            metrics.waiting.set(adm.waiting + 1)
            try:
                await adm.enter()
            finally:
                metrics.waiting.set(adm.waiting)
        except APIError as err:
            metrics.requests.labels(str(err.status)).inc()
            return err.response()
        metrics.in_flight.inc()
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        start = time.monotonic()
        deadline = start + settings.request_timeout
        tracker = OutputTracker(params.stop, tools=bool(prompt.tools), prefill=prompt.prefill)
        question, matched = _question_and_matched(req)
        gen = engine.generate(prompt, params, rid)
        first_token = [True]

        def timeout_error() -> APIError:
            if drain.active and drain.deadline < deadline:
                return APIError("timeout", f"the server is shutting down and the request did not finish within "
                                           f"{settings.request_timeout:g} s")
            return APIError("timeout", f"the request took longer than {settings.request_timeout:g} s")

        async def events() -> AsyncIterator[Delta]:
            """The engine's deltas, under the deadline (shortened by a shutdown); the first token is timed."""
            try:
                while True:
                    left = drain.cap(deadline) - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    try:
                        d = await asyncio.wait_for(gen.__anext__(), timeout=left)
                    except StopAsyncIteration:
                        return
                    if d.token_ids and first_token[0]:
                        first_token[0] = False
                        metrics.ttft.observe(time.monotonic() - start)
                    yield d
                    if tracker.stopped:
                        return
            finally:
                await gen.aclose()

        def finish(status_: str, n_prompt: int, n_out: int) -> None:
            adm.leave()
            metrics.in_flight.dec()
            metrics.requests.labels(status_).inc()
            metrics.latency.observe(time.monotonic() - start)
            metrics.prompt_tokens.inc(n_prompt)
            metrics.completion_tokens.inc(n_out)

        if not req.stream:
            n_prompt = n_out = 0
            reason = "stop"
            try:
                async for d in events():
                    n_prompt = d.prompt_tokens or n_prompt
                    n_out += len(d.token_ids)
                    tracker.add(d.text)
                    reason = d.finish_reason or reason
            except TimeoutError:
                status = "504"
                return timeout_error().response()
            except EngineError as err:
                status = "500"
                return APIError("server_error", str(err)).response()
            finally:
                finish(status, n_prompt, n_out)
            ans = tracker.final()
            if tracker.stopped:
                reason = "stop"
            content = ans.content
            if content:  # the identity policy: a name only from a gallery match, else a refusal
                content = policy.apply(content, "" if ans.tool_calls else question, matched=matched).answer
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if ans.tool_calls:
                message["tool_calls"] = ans.tool_calls
                if reason != "length":  # a call cut off by max_tokens (repaired by the parser) stays "length"
                    reason = "tool_calls"
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": settings.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
            })

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        screen = policy.AnswerScreen(question, matched=matched)  # releases text only once the policy passed it

        def chunk(delta: dict, reason: str | None = None) -> bytes:
            return _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": settings.model_name,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]})

        async def stream() -> AsyncIterator[bytes]:
            status_ = "200"
            n_prompt = n_out = 0
            reason = "stop"
            try:
                yield chunk({"role": "assistant", "content": ""})
                try:
                    async for d in events():
                        n_prompt = d.prompt_tokens or n_prompt
                        n_out += len(d.token_ids)
                        reason = d.finish_reason or reason
                        text = screen.feed(tracker.add(d.text))
                        if text:
                            yield chunk({"content": text})
                except TimeoutError:
                    status_ = "504"
                    yield _sse(timeout_error().body())
                    return
                except EngineError as err:
                    status_ = "500"
                    yield _sse(APIError("server_error", str(err)).body())
                    return
                tail = tracker.flush()
                ans = tracker.final()
                if tracker.stopped:
                    reason = "stop"
                calls = ans.tool_calls if ans.tool_calls and reason != "length" else []
                if calls:
                    reason = "tool_calls"
                    if tracker.in_calls and ans.content and not tracker.shown:
                        tail += ans.content
                elif tracker.in_calls:  # held back as a tool call, but none parsed: it was content after all
                    tail += tracker.text[tracker.shown:]
                text = screen.feed(tail) + screen.finish(tool_calls=bool(calls))
                if text:
                    yield chunk({"content": text})
                if calls:
                    yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
                yield chunk({}, reason)
                if include_usage:
                    yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                                "model": settings.model_name, "choices": [],
                                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                                          "total_tokens": n_prompt + n_out}})
                yield b"data: [DONE]\n\n"
            except asyncio.CancelledError:  # the client went away
                status_ = "499"
                raise
            finally:
                finish(status_, n_prompt, n_out)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- the natural-language query API and the chat page (serve/query.py, serve/webpage.py)
    from .query import query_router
    from .webpage import web_router

    app.include_router(query_router(app))
    app.include_router(web_router(app))
    # ---
    return app


__all__ = ["APIError", "AccessLog", "Admission", "Drain", "Metrics", "api_key_of", "create_app", "owner_of"]
