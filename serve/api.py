"""The OpenAI-compatible HTTP front end (FastAPI), the same for every engine.

Routes: POST /v1/chat/completions (streaming with SSE, images, tools), GET /v1/models, GET /health,
GET /metrics (Prometheus text). Later features (the face-query API, the chat page) add routers to the app
returned by ``create_app``; they find the engine and settings on ``app.state``.

Admission: at most ``max_concurrency`` requests run; up to ``max_queue`` more wait; beyond that: 429. Every
admitted request has ``request_timeout`` seconds until its last token (504, or an error event mid-stream).
API keys: ``Authorization: Bearer <key>`` on /v1/* when keys are configured (401 otherwise).
Shutdown (SIGTERM / Ctrl-C): uvicorn stops accepting connections and waits for the open ones, so in-flight
requests finish; requests that still arrive meanwhile get 503; then the engine is shut down.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from .engines import Delta, Engine, EngineError
from .images import ImageRefused
from .output import OutputTracker
from .prompt import BadRequest, prepare, sampling
from .protocol import ChatCompletionRequest
from .settings import ServeSettings

M = TypeVar("M", bound=BaseModel)


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": None,
                                       "code": self.code}}, status_code=self.status)


async def read_body(request: Request, model: type[M], max_bytes: int) -> M:
    """The request's JSON body as ``model``: 413 past ``max_bytes``, 400 naming the first invalid field."""
    body = b""
    async for chunk in request.stream():  # chunked uploads have no content-length: count as we read
        body += chunk
        if len(body) > max_bytes:
            raise APIError(413, f"the request is larger than the server's limit of {max_bytes} bytes",
                           code="request_too_large")
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise APIError(400, f"invalid request: {where}: {first.get('msg')}") from None


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
    """A bounded waiting room in front of ``max_concurrency`` slots."""

    slots: int
    max_queue: int
    running: int = 0
    waiting: int = 0
    _sem: asyncio.Semaphore | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.slots)

    async def enter(self) -> None:
        if self.running >= self.slots and self.waiting >= self.max_queue:
            raise APIError(429, f"the server is busy ({self.running} running, {self.waiting} waiting); retry later",
                           "rate_limit_error", "queue_full")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._sem.release()


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def create_app(engine: Engine, settings: ServeSettings | None = None, *, start_engine: bool = True) -> FastAPI:
    settings = settings or ServeSettings()
    metrics = Metrics()
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_engine:
            await engine.start()
        app.state.admission = Admission(settings.max_concurrency, settings.max_queue)
        app.state.ready = True
        yield
        state["draining"] = True
        await engine.shutdown()

    app = FastAPI(title="FaceLLM", lifespan=lifespan)
    app.state.engine, app.state.settings, app.state.metrics, app.state.ready = engine, settings, metrics, False

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if path.startswith("/v1/"):
            if settings.api_keys:
                auth = request.headers.get("authorization", "")
                key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
                if key not in settings.api_keys:
                    metrics.requests.labels("401").inc()
                    return APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                    "authentication_error", "invalid_api_key").response()
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > settings.max_request_bytes:
                metrics.requests.labels("413").inc()
                return APIError(413, f"the request is larger than the server's limit of "
                                     f"{settings.max_request_bytes} bytes", code="request_too_large").response()
            if state["draining"]:
                return APIError(503, "the server is shutting down", "server_error", "shutting_down").response()
        return await call_next(request)

    @app.get("/health")
    async def health():
        ok = app.state.ready and not state["draining"]
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
                raise APIError(404, f"model {req.model!r} is not served here; this server serves "
                                    f"{settings.model_name!r}", code="model_not_found")
            try:
                loop = asyncio.get_running_loop()  # decoding images and parsing can take a moment: off the loop
                prompt = await loop.run_in_executor(None, prepare, req, settings)
                params = sampling(req, settings)
            except (BadRequest, ImageRefused) as err:
                raise APIError(400, str(err)) from None
            adm: Admission = app.state.admission
            metrics.waiting.set(adm.waiting + 1)
            await adm.enter()
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
        gen = engine.generate(prompt, params, rid)
        first_token = [True]

        async def events() -> AsyncIterator[Delta]:
            """The engine's deltas, under the deadline; the first token is timed."""
            try:
                while True:
                    left = deadline - time.monotonic()
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
                return APIError(504, f"the request took longer than {settings.request_timeout:g} s",
                                "timeout_error", "timeout").response()
            except EngineError as err:
                status = "500"
                return APIError(500, str(err), "server_error").response()
            finally:
                finish(status, n_prompt, n_out)
            ans = tracker.final()
            if tracker.stopped:
                reason = "stop"
            message: dict[str, Any] = {"role": "assistant", "content": ans.content}
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
                        text = tracker.add(d.text)
                        if text:
                            yield chunk({"content": text})
                except TimeoutError:
                    status_ = "504"
                    yield _sse({"error": {"message": f"the request took longer than {settings.request_timeout:g} s",
                                          "type": "timeout_error", "code": "timeout"}})
                    return
                except EngineError as err:
                    status_ = "500"
                    yield _sse({"error": {"message": str(err), "type": "server_error", "code": None}})
                    return
                tail = tracker.flush()
                if tail:
                    yield chunk({"content": tail})
                ans = tracker.final()
                if tracker.stopped:
                    reason = "stop"
                if ans.tool_calls and reason != "length":
                    reason = "tool_calls"
                    if tracker.in_calls and ans.content and not tracker.shown:
                        yield chunk({"content": ans.content})
                    yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(ans.tool_calls)]})
                elif tracker.in_calls:  # held back as a tool call, but none parsed: it was content after all
                    rest = tracker.text[tracker.shown:]
                    if rest:
                        yield chunk({"content": rest})
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


__all__ = ["APIError", "Admission", "Metrics", "create_app"]
