"""POST /v1/faces/query: the natural-language query API (the face agent behind the server).

Images (data: URIs, or server-side paths under ``--image-dir``, under the same rules and limits as
/v1/chat/completions) and a question in; the agent's answer, per-face results, tool calls, evidence and
grounding out. ``conversation_id`` continues a conversation: its images and their cached analyses stay, so
follow-ups reuse the earlier tool work. ``stream: true`` answers with server-sent events (tool calls and
results as they happen, then the answer in pieces, then the whole response).

The agent's model (``ServeSettings.query_model``):
* ``"rules"`` (default): no language model: the agent's rule router picks the tools and the answer is a
  template over their results (``facellm ask --agent --no-model``). Fast on a CPU (tool time only) and always
  faithful to what the tools measured, which the untrained default LM is not.
* ``"engine"``: the served FaceLLM, through the engine's own generation path (``serve.agent_model.
  EngineChatModel``: the agent's messages and the registry's tools become the server's ``PreparedPrompt``, as a
  /v1/chat/completions request with tools does, and ``engine.generate`` answers), on both engines: in vLLM with
  ``--engine vllm``, on the transformers engine's single generation thread (one generation at a time, with the
  chat completions) with ``--engine transformers``. ``rules_first`` mode: questions the rules recognise skip the
  model's tool choice; the rest go to the model. Each answer's ``path`` says who chose its tools.

Admission (queue / 429), API keys, request size limits, ``request_timeout`` and the error vocabulary are the
server's own. A query holds one of the ``max_concurrency`` slots from admission to its answer, model turns
included (they do not queue again); its model turns share its deadline, and a query that times out (or whose
client went away) stops its running generation in the engine. Its tokens count in the server's metrics. A
conversation belongs to the API key that started it: with any other key it does not exist (404, the same answer
as for an unknown id, so its existence is not confirmed).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .images import ImageRefused, resolve_image
from .settings import ServeSettings

# ------------------------------------------------------------------ request / response models


class QueryRequest(BaseModel):
    """A question about one or more face images."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"images": ["data:image/jpeg;base64,/9j/4AAQ..."], "question": "How many faces are there?"},
        {"conversation_id": "conv_0123456789abcdef", "question": "Is the person on the left smiling?"}]})

    question: str = Field(min_length=1, max_length=4000, description="the question, in plain language")
    images: list[str] = Field(default_factory=list, description=(
        "new images for this conversation: data:image/...;base64 URIs, or absolute paths inside a folder the "
        "server allows (--image-dir); they get the ids image_1, image_2, ... in order"))
    conversation_id: str | None = Field(default=None, max_length=64, description=(
        "continue this conversation (from an earlier response): its images and tool results are reused"))
    use_gallery: bool = Field(default=False, description=(
        "let the agent identify faces in the server's enrolled gallery (--gallery); identity questions are "
        "only ever answered from a gallery match"))
    stream: bool = Field(default=False, description=(
        "answer with server-sent events: tool_call, tool_result, answer_delta, then result (the full response)"))


class FaceResult(BaseModel):
    """One face as the tools measured it; pixel coordinates of the original image (after EXIF rotation)."""

    id: int = Field(description="face number, 1 = leftmost")
    box: list[float] = Field(description="[x1, y1, x2, y2]")
    score: float = Field(description="detector confidence")
    kpts5: list[list[float]] = Field(description="right eye, left eye, nose tip, right and left mouth corner")
    landmarks: list[list[float]] = Field(default_factory=list, description=(
        "68-point (iBUG) landmarks when measured, else the 478-point mesh, else empty"))
    head_direction: str | None = Field(default=None, description="head pose in plain words, when measured")
    smiling: bool | None = Field(default=None, description="smile cue (model estimate), when measured")
    expression: str | None = Field(default=None, description="expression (model estimate), when measured")
    perceived_age: str | None = Field(default=None, description="perceived age range (model estimate)")
    perceived_gender: str | None = Field(default=None, description="perceived gender (model estimate)")


class ImageResult(BaseModel):
    image_id: str
    width: int
    height: int
    faces: list[FaceResult]


class ToolCallResult(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]
    origin: Literal["model", "rules"] = Field(description="who chose the call: the model or the rule router")
    ok: bool
    seconds: float
    result: dict[str, Any] | None = None
    error: str | None = None


class EvidenceItem(BaseModel):
    tool: str
    image: str | None = None
    face_id: int | None = None
    attribute: str
    value: Any = None
    probability: float | None = None


class Grounding(BaseModel):
    ok: bool = Field(description="no claim of the answer contradicts the tool results")
    claims_checked: int
    contradictions: int
    issues: list[dict[str, Any]] = Field(default_factory=list)


class Timings(BaseModel):
    model: float
    tools: float
    total: float


class QueryResponse(BaseModel):
    """The agent's answer with what it rests on."""

    id: str
    object: Literal["faces.query"] = "faces.query"
    conversation_id: str = Field(description="send it back to ask a follow-up about the same images")
    question: str
    answer: str
    agent_model: Literal["rules", "engine"] = Field(description="rules: no LM; engine: the served FaceLLM")
    path: Literal["model", "rules", "none"] = Field(description="who chose the tools")
    answer_source: Literal["model", "template", "policy"]
    stop_reason: str
    images: list[ImageResult] = Field(description="every image of the conversation, with its faces")
    tool_calls: list[ToolCallResult]
    evidence: list[EvidenceItem]
    grounding: Grounding
    timings_s: Timings
    notes: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------ conversations


class QueryError(ValueError):
    """A query the server refuses; ``code`` in the server's error vocabulary (serve/errors.py)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class Conversation:
    id: str
    agent: Any  # FaceAgent
    owner: str | None = None  # digest of the API key that started it (None: the server has no keys)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    sink: Any = None  # where the agent's events go during the current question
    turns: Any = None  # ModelTurns of the agent's model (engine mode): the question's deadline, and its stop

    def event(self, kind: str, payload: dict) -> None:
        if self.sink is not None:
            self.sink(kind, payload)


class Conversations:
    """Live conversations, least recently used evicted beyond ``limit`` or after ``ttl`` idle seconds."""

    def __init__(self, limit: int, ttl: float) -> None:
        self.limit, self.ttl = limit, ttl
        self._items: OrderedDict[str, Conversation] = OrderedDict()

    def get(self, cid: str, owner: str | None) -> Conversation:
        """The conversation ``cid`` of ``owner``; another key's conversation is reported exactly like a missing one."""
        self._expire()
        conv = self._items.get(cid)
        if conv is None or conv.owner != owner:
            raise QueryError("not_found", f"no conversation {cid!r} (unknown, or expired after {self.ttl:g} s "
                                          "idle); start a new one by leaving conversation_id out", "conversation_id")
        self._items.move_to_end(cid)
        conv.last_used = time.monotonic()
        return conv

    def add(self, conv: Conversation) -> None:
        self._expire()
        self._items[conv.id] = conv
        while len(self._items) > self.limit:
            old_id, old = next(iter(self._items.items()))
            if old.lock.locked():  # busy: keep it (the limit is briefly exceeded)
                break
            del self._items[old_id]

    def _expire(self) -> None:
        now = time.monotonic()
        for cid in [c for c, v in self._items.items() if now - v.last_used > self.ttl and not v.lock.locked()]:
            del self._items[cid]

    def __len__(self) -> int:
        return len(self._items)


# ------------------------------------------------------------------ the agent behind the route


class QueryService:
    """Builds agents (rules or the engine's model), runs questions off the event loop, shapes responses."""

    def __init__(self, engine: Any, settings: ServeSettings, metrics: Any = None) -> None:
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.conversations = Conversations(settings.max_conversations, settings.conversation_ttl)
        self.mode: Literal["rules", "engine"] = "engine" if settings.query_model == "engine" else "rules"
        if self.mode == "engine" and not callable(getattr(engine, "generate", None)):
            raise ValueError("--query-model engine needs an engine that generates (serve.engines)")
        # the agents run here (tools, policy, grounding); their model turns go to the engine, which serialises
        # them with the chat completions (transformers: one generation thread) or batches them (vLLM)
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.max_concurrency),
                                        thread_name_prefix="facellm-query")
        self._turns: weakref.WeakSet = weakref.WeakSet()  # every conversation's ModelTurns (engine mode)

    def _usage(self, n_prompt: int, n_out: int) -> None:  # on the event loop, after each model turn
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(n_prompt)
            self.metrics.completion_tokens.inc(n_out)

    def _model(self, turns: Any, loop: asyncio.AbstractEventLoop | None):
        """The agent's chat model for one conversation: the engine's FaceLLM (engine mode), else None (rules)."""
        if self.mode != "engine":
            return None
        from .agent_model import EngineChatModel

        return EngineChatModel(engine=self.engine, loop=loop or asyncio.get_running_loop(), settings=self.settings,
                               max_tokens=min(128, self.settings.default_max_tokens), turns=turns,
                               on_usage=self._usage)

    def new_conversation(self, use_gallery: bool, owner: str | None = None,
                         loop: asyncio.AbstractEventLoop | None = None) -> Conversation:
        """A new conversation (engine mode: call it on the server's event loop, or pass ``loop``)."""
        from facellm.agent import AgentConfig, FaceAgent

        from .agent_model import ModelTurns

        if use_gallery and self.settings.gallery is None:
            raise QueryError("no_gallery", "this server has no face gallery (start it with --gallery DB)",
                             "use_gallery")
        conv = Conversation("conv_" + uuid.uuid4().hex[:16], None, owner)
        conv.turns = ModelTurns() if self.mode == "engine" else None
        if conv.turns is not None:
            self._turns.add(conv.turns)
        config = AgentConfig(mode="rules_first", max_steps=3)
        conv.agent = FaceAgent(self._model(conv.turns, loop), gallery=str(self.settings.gallery) if use_gallery
                               else None, config=config, on_event=conv.event)
        return conv

    def ask(self, conv: Conversation, question: str, images: list[Any]) -> dict:
        """Runs in a worker thread: add the images, ask, shape the response."""
        for img in images:
            conv.agent.add_image(img)
        if not conv.agent.image_ids:
            raise QueryError("no_image", "the conversation has no image yet: send at least one in images", "images")
        result = conv.agent.ask(question)
        d = result.to_dict()
        store = conv.agent.store
        shaped = []
        for image_id in store.ids:
            loaded = store.loaded(image_id)
            fa = store.analysis(image_id, ())  # cached: whatever the tools measured (detection at least)
            shaped.append(ImageResult(image_id=image_id, width=loaded.width, height=loaded.height,
                                      faces=[_face(f) for f in fa.faces]))
        return QueryResponse(
            id="fq-" + uuid.uuid4().hex[:20], conversation_id=conv.id, question=result.question, answer=d["answer"],
            agent_model=self.mode, path=d["path"], answer_source=d["answer_source"], stop_reason=d["stop_reason"],
            images=shaped, tool_calls=[ToolCallResult(**c) for c in d["tool_calls"]],
            evidence=[EvidenceItem(**e) for e in d["evidence"]], grounding=Grounding(**d["grounding"]),
            timings_s=Timings(**d["timings_s"]), notes=d["notes"]).model_dump(mode="json")

    def close(self) -> None:
        """Shutdown: model turns still running are stopped (their generations end in the engine), queued
        questions are dropped."""
        for turns in list(self._turns):
            turns.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _pts(points) -> list[list[float]]:
    return [[round(float(p[0]), 1), round(float(p[1]), 1)] for p in points]


def _face(f) -> FaceResult:
    lm = f.lmk68 or f.mesh478
    age = gender = None
    if f.attributes and f.attributes.perceived_age:
        a = f.attributes.perceived_age
        age = f"{a.low:.0f}-{a.high:.0f} (model estimate)"
    if f.attributes and f.attributes.perceived_gender:
        g = f.attributes.perceived_gender
        gender = f"{g.value} ({g.probability:.0%}, model estimate)"
    return FaceResult(id=f.id, box=[round(v, 1) for v in f.box.as_list()], score=round(f.score, 3),
                      kpts5=_pts(f.kpts5), landmarks=_pts(lm.points) if lm else [],
                      head_direction=f.pose.direction if f.pose else None,
                      smiling=f.cues.smile.active if f.cues else None,
                      expression=f.expression.value if f.expression else None,
                      perceived_age=age, perceived_gender=gender)


# ------------------------------------------------------------------ the route


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _pieces(text: str) -> list[str]:
    """The answer in word-sized pieces for streaming (whitespace kept, so the pieces join to the answer)."""
    return re.findall(r"\S+\s*|\s+", text)


def query_router(app) -> APIRouter:
    """The /v1/faces/query route; uses ``app.state`` (engine, settings, admission) and APIError of api.py."""
    from .api import APIError, owner_of, read_body

    router = APIRouter()
    settings: ServeSettings = app.state.settings
    default_openapi = app.openapi

    def openapi() -> dict:  # the request is read by hand (size-limited streaming read): name its schema here
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["QueryRequest"] = \
                QueryRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        return app.openapi_schema

    app.openapi = openapi
    service = QueryService(app.state.engine, settings, app.state.metrics)
    app.state.query = service

    def decode(refs: list[str]) -> list[Any]:
        if len(refs) > settings.max_images:
            raise ImageRefused(f"at most {settings.max_images} images per request", "too_many_images")
        return [resolve_image(r, settings) for r in refs]

    @router.post("/v1/faces/query", response_model=QueryResponse, tags=["faces"],
                 summary="Ask the face agent about images",
                 responses={400: {"description": "bad request or image"}, 401: {"description": "missing API key"},
                            404: {"description": "unknown conversation"}, 413: {"description": "too large"},
                            429: {"description": "queue full"}, 504: {"description": "timed out"}},
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"$ref": "#/components/schemas/QueryRequest"}}}}})
    async def faces_query(request: Request):
        try:
            req = await read_body(request, QueryRequest, settings.max_request_bytes)
            loop = asyncio.get_running_loop()
            try:
                images = await loop.run_in_executor(None, decode, req.images)
            except ImageRefused as err:
                raise APIError(err.code, str(err), param="images") from None
            owner = owner_of(request)
            try:
                if req.conversation_id:
                    conv = service.conversations.get(req.conversation_id, owner)
                else:
                    conv = service.new_conversation(req.use_gallery, owner)
            except QueryError as err:
                raise APIError(err.code, str(err), param=err.param) from None
            adm = app.state.admission
            await adm.enter()
        except APIError as err:
            app.state.metrics.requests.labels(str(err.status)).inc()
            return err.response()
        start = time.monotonic()
        events: asyncio.Queue = asyncio.Queue()
        done = threading.Event()

        def sink(kind: str, payload: dict) -> None:  # called from the worker thread
            if kind in ("tool_call", "tool_result") and not done.is_set():
                loop.call_soon_threadsafe(events.put_nowait, {"type": kind, **payload})

        drain = app.state.drain

        def left() -> float:  # of the request's time (a shutdown shortens it)
            return drain.cap(start + settings.request_timeout) - time.monotonic()

        async def run() -> dict:
            # a follow-up waits for the conversation's previous question, within its own deadline
            await asyncio.wait_for(conv.lock.acquire(), timeout=max(0.001, left()))
            conv.sink = sink if req.stream else None
            if conv.turns is not None:
                conv.turns.begin(left)  # the model's turns end by the query's deadline
            fut = loop.run_in_executor(service._pool, service.ask, conv, req.question.strip(), images)

            def release(_):
                done.set()
                conv.sink = None
                loop.call_soon_threadsafe(conv.lock.release)

            fut.add_done_callback(release)  # the lock is held until the worker really finished
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout=max(0.001, left()))
            except BaseException:  # timed out, or the client went away: stop the model's generation too
                if conv.turns is not None and not fut.done():
                    conv.turns.stop()
                raise

        app.state.metrics.in_flight.inc()

        def finish(status: str) -> None:
            adm.leave()
            app.state.metrics.in_flight.dec()
            app.state.metrics.requests.labels(status).inc()
            app.state.metrics.latency.observe(time.monotonic() - start)

        def failure(err: BaseException) -> APIError:
            if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
                return APIError("timeout", f"the query took longer than {settings.request_timeout:g} s"
                                + (" (the server is shutting down)" if drain.active else ""))
            if isinstance(err, QueryError):
                return APIError(err.code, str(err), param=err.param)
            if isinstance(err, ImageRefused):
                return APIError(err.code, str(err), param="images")
            if isinstance(err, ValueError):  # bad question, undecodable image, tool refusal
                return APIError("invalid_request", str(err))
            return APIError("server_error", f"the agent failed: {type(err).__name__}: {err}")

        if not req.stream:
            status = "200"
            try:
                result = await run()
            except Exception as err:  # noqa: BLE001 (every failure becomes a clear HTTP error)
                api = failure(err)
                status = str(api.status)
                return api.response()
            finally:
                finish(status)
            service.conversations.add(conv)
            return JSONResponse(result)

        async def stream() -> AsyncIterator[bytes]:
            status = "200"
            task = asyncio.ensure_future(run())
            try:
                yield _sse({"type": "start", "conversation_id": conv.id})
                while True:
                    getter = asyncio.ensure_future(events.get())
                    finished, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in finished:
                        yield _sse(getter.result())
                        continue
                    getter.cancel()
                    break
                while not events.empty():
                    yield _sse(events.get_nowait())
                try:
                    result = task.result()
                except Exception as err:  # noqa: BLE001
                    api = failure(err)
                    status = str(api.status)
                    yield _sse({"type": "error", "error": {**api.body()["error"], "status": api.status}})
                    return
                service.conversations.add(conv)
                for piece in _pieces(result["answer"]):
                    yield _sse({"type": "answer_delta", "text": piece})
                yield _sse({"type": "result", "response": result})
                yield b"data: [DONE]\n\n"
            except asyncio.CancelledError:
                status = "499"
                raise
            finally:
                finish(status)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router


__all__ = ["FaceResult", "ImageResult", "QueryRequest", "QueryResponse", "QueryService", "query_router"]
