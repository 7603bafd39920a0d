"""The agent loop: question -> model-chosen tool calls (or rule-routed ones) -> tool results -> answer with
evidence, a policy pass and a grounding check.

One ``FaceAgent`` is one conversation: its ``ImageStore`` holds the images by id ("image_1", ...) and caches
each image's analysis, so follow-up questions reuse earlier tool work; the message history keeps the tool
calls and results for the model.

Per question (``ask``):
1. The model (any LangChain chat model with ``bind_tools``) gets up to ``max_steps`` turns. Valid tool calls
   run with a per-call timeout; errors (unknown tool, bad arguments, a tool that raises or times out) are fed
   back as ``{"error": ...}`` observations; malformed calls are answered with the parse error and retried at
   most ``max_repairs`` times.
2. If the model made no successful tool call but the question plainly needs one, the rules of
   ``planner.route`` pick the tools, and the answer is phrased from their results by template
   (``path="rules"``). Otherwise the model's answer stands (``path="model"``).
3. The policy (``policy.apply``) and the grounding check (``grounding.check_answer``) run on the answer.
"""

from __future__ import annotations

import base64
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from facellm.toolcall import DEFAULT_SYSTEM
from facellm.tools.registry import REGISTRY, ImageStore, ToolSpec

from . import planner, policy
from .evidence import Evidence, evidence_from
from .grounding import GroundingReport, check_answer, labels_for
from .tools import DEFAULT_TIMEOUT_S, ToolOutcome, ToolRunner, langchain_tools

Path_ = Literal["model", "rules", "none"]


@dataclass
class AgentConfig:
    max_steps: int = 4  # model calls per question
    max_repairs: int = 1  # retries after a malformed tool call before the rules take over
    tool_timeout_s: float = DEFAULT_TIMEOUT_S
    fallback: bool = True  # rule-route questions that need a tool when the model called none
    # "model_first": the model chooses the tools, the rules step in when it calls none (the design);
    # "rules_first": questions the rules recognise skip the model's tool choice (one model call less: fast
    # on a CPU), the rest go to the model
    mode: Literal["model_first", "rules_first"] = "model_first"
    # who words a rule-routed answer: "template" (always faithful to the tool results) or "model" (the model
    # phrases it from the results in its context; kept only if the grounding check finds no contradiction)
    phrasing: Literal["template", "model"] = "template"
    # with FaceLLM (in-process or served): when the rules could answer, stop the model's first turn after this many
    # tokens if it has not started a <tool_call> (a weak model's stray text costs seconds per token batch on a CPU)
    tool_probe_tokens: int | None = 16
    send_images: bool | None = None  # image parts to the model; None: only to FaceLLM (it has a vision tower)
    system_prompt: str = DEFAULT_SYSTEM  # the prompt the agent traces were trained with (policy included)


@dataclass
class ToolCallRecord:
    id: str
    name: str
    arguments: dict
    origin: Literal["model", "rules"]
    ok: bool
    seconds: float
    result: dict | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class AgentResult:
    question: str
    answer: str
    path: Path_  # who chose the tools: the model, the rules, or no tool was needed
    answer_source: Literal["model", "template", "policy"]
    stop_reason: Literal["answered", "step_limit", "gave_up", "no_model"]  # how the model's turns ended
    tool_calls: list[ToolCallRecord]
    evidence: list[Evidence]
    grounding: GroundingReport
    images: list[str]
    steps: int
    model_s: float
    tool_s: float
    total_s: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "path": self.path,
                "answer_source": self.answer_source, "stop_reason": self.stop_reason, "images": self.images,
                "tool_calls": [c.to_dict() for c in self.tool_calls],
                "evidence": [e.to_dict() for e in self.evidence], "grounding": self.grounding.to_dict(),
                "steps": self.steps, "timings_s": {"model": round(self.model_s, 3), "tools": round(self.tool_s, 3),
                                                   "total": round(self.total_s, 3)}, "notes": self.notes}


Event = Callable[[str, dict], None]  # ("tool_call" | "tool_result" | "model" | "answer", payload)


def _data_uri(image: Any) -> str | None:
    if isinstance(image, (str, Path)) and Path(image).is_file():
        mime = mimetypes.guess_type(str(image))[0] or "image/png"
        return f"data:{mime};base64," + base64.b64encode(Path(image).read_bytes()).decode()
    return None


class FaceAgent:
    """A conversation with the face agent. ``model=None``: rules and templates only (no LM)."""

    def __init__(self, model: BaseChatModel | None = None, *, images: Iterable[Any] = (), gallery: Any = None,
                 config: AgentConfig | None = None, extra_tools: Iterable[ToolSpec] = (),
                 on_event: Event | None = None) -> None:
        self.config = config or AgentConfig()
        self.store = ImageStore(gallery=gallery)
        self.runner = ToolRunner(self.store, timeout_s=self.config.tool_timeout_s, extra=extra_tools)
        self.on_event = on_event or (lambda kind, payload: None)
        self.history: list[BaseMessage] = []
        self._pending: list[str] = []  # images added since the last question
        self._sources: dict[str, Any] = {}
        self._matched: set[str] = set()  # names the gallery matched so far in this conversation
        self.model = model
        self._bound = None
        self._is_facellm = False
        if model is not None:
            from .chat_model import FaceLLMChatModel

            # FaceLLM itself: in-process (FaceLLMChatModel) or through a serving engine (facellm.serve.agent_model.
            # EngineChatModel); both resolve image ids through the conversation's store (``with_store``)
            is_facellm = isinstance(model, FaceLLMChatModel) or callable(getattr(model, "with_store", None))
            if is_facellm:
                model = model.with_store(self.store)
            send = self.config.send_images
            self._send_images = is_facellm if send is None else send
            specs = [self.runner.spec(n) for n in self.runner.specs]
            self._plain = model
            self._bound = model.bind_tools([s.openai() if s.name in REGISTRY else _extra_tool(s) for s in specs])
            self._is_facellm = is_facellm
        for image in images:
            self.add_image(image)

    # ------------------------------------------------------------------ images
    def add_image(self, image: Any, image_id: str | None = None) -> str:
        """Add an image (path, bytes, PIL, array) to the conversation; returns its id."""
        self.store.loaded(image_id := self.store.add(image, image_id))  # decode now: a bad file fails here
        self._sources[image_id] = image
        self._pending.append(image_id)
        return image_id

    @property
    def image_ids(self) -> list[str]:
        return self.store.ids

    def _user_message(self, question: str) -> HumanMessage:
        new, self._pending = self._pending, []
        ids = ", ".join(self.store.ids)
        text = f"Images in this conversation: {ids}.\n{question}" if ids else question
        if not (self._bound is not None and self._send_images and new):
            return HumanMessage(content=text)
        parts: list[dict] = []
        for image_id in new:
            if self._is_facellm:  # resolved in-process through the store (no re-encoding, cached analysis)
                parts.append({"type": "image_url", "image_url": {"url": image_id}})
            elif (uri := _data_uri(self._sources[image_id])) is not None:
                parts.append({"type": "image_url", "image_url": {"url": uri}})
            parts.append({"type": "text", "text": f"({image_id})"})
        return HumanMessage(content=[*parts, {"type": "text", "text": text}])

    # ------------------------------------------------------------------ tools
    def _run(self, name: str, args: dict, origin: str, call_id: str | None = None) -> ToolCallRecord:
        call_id = call_id or "call_" + uuid.uuid4().hex[:12]
        self.on_event("tool_call", {"id": call_id, "name": name, "arguments": args, "origin": origin})
        out: ToolOutcome = self.runner.run(name, args)
        rec = ToolCallRecord(call_id, name, out.arguments, origin, out.ok, out.seconds, out.result, out.error)  # type: ignore[arg-type]
        self.on_event("tool_result", {"id": call_id, "name": name, "ok": out.ok, "seconds": out.seconds,
                                      "result": out.result, "error": out.error})
        return rec

    # ------------------------------------------------------------------ one question
    def ask(self, question: str, images: Sequence[Any] = ()) -> AgentResult:
        question = question.strip()
        if not question:
            raise ValueError("the question is empty")
        t_start = time.perf_counter()
        for image in images:
            self.add_image(image)
        turn: list[BaseMessage] = [self._user_message(question)]
        records: list[ToolCallRecord] = []
        notes: list[str] = []
        model_s, steps, repairs = 0.0, 0, 0
        final: str | None = None
        stop: str = "no_model" if self._bound is None else "step_limit"
        plan = planner.route(question, self.store.ids)
        use_model = self._bound is not None and not (self.config.mode == "rules_first" and plan.needs_tools)
        if self._bound is not None and not use_model:
            stop = "no_model"
            notes.append("rules_first: the rules recognised the question, the model was not asked to choose tools")

        while use_model and steps < self.config.max_steps:
            steps += 1
            t0 = time.perf_counter()
            probe = {}
            if self._is_facellm and self.config.tool_probe_tokens and self.config.fallback and plan.needs_tools \
                    and not records:
                probe = {"tool_probe_tokens": self.config.tool_probe_tokens}
            ai = self._bound.invoke([SystemMessage(self.config.system_prompt), *self.history, *turn], **probe)
            model_s += time.perf_counter() - t0
            self.on_event("model", {"step": steps, "content": ai.content, "tool_calls": ai.tool_calls,
                                    "invalid_tool_calls": ai.invalid_tool_calls})
            calls = list(ai.tool_calls)
            invalid = list(ai.invalid_tool_calls)
            if not calls and not invalid:
                final, stop = _text(ai.content), "answered"
                break
            # every call gets an answer in the history, the malformed ones their parse error
            replies: list[ToolMessage] = []
            kept = []
            for c in calls:
                rec = self._run(c["name"], c.get("args") or {}, "model", c.get("id"))
                records.append(rec)
                kept.append({"name": c["name"], "args": rec.arguments, "id": rec.id, "type": "tool_call"})
                replies.append(ToolMessage(content=_observation(rec), tool_call_id=rec.id, name=c["name"]))
            for bad in invalid:
                cid = bad.get("id") or "call_" + uuid.uuid4().hex[:12]
                msg = (f"the tool call could not be read: {bad.get('error') or 'malformed'}. Write each call as "
                       '<tool_call>{"name": ..., "arguments": {...}}</tool_call> with a JSON object.')
                notes.append(f"rejected a malformed tool call: {bad.get('error')}")
                self.on_event("tool_call_rejected", {"id": cid, "raw": bad.get("args"), "error": msg})
                kept.append({"name": bad.get("name") or "invalid_tool_call", "args": {}, "id": cid,
                             "type": "tool_call"})
                replies.append(ToolMessage(content=f'{{"error": {_json_str(msg)}}}', tool_call_id=cid,
                                           name=bad.get("name") or "invalid_tool_call"))
            turn.append(AIMessage(content=_text(ai.content), tool_calls=kept))
            turn.extend(replies)
            if invalid and not calls:
                repairs += 1
                if repairs > self.config.max_repairs:
                    notes.append("gave up on the model's tool calls after a repair attempt")
                    stop = "gave_up"
                    break
        if stop == "step_limit" and use_model:
            notes.append(f"the model did not finish within {self.config.max_steps} steps")

        if final is not None and _looks_broken(final):  # a weak model may echo tool markup instead of answering
            notes.append("the model's answer was tool markup or JSON, not an answer: discarded")
            final = None
        model_ok = [r for r in records if r.ok and r.origin == "model"]
        missing = planner.uncovered(plan, {r.name for r in model_ok}) if model_ok else set()
        template: planner.Phrase | None = None
        path: Path_ = "model" if model_ok else "none"
        answer_source = "model"
        if self.config.fallback and plan.needs_tools and (not model_ok or final is None or missing):
            template, rule_records = self._rules(plan, turn)
            records += rule_records
            if not model_ok or missing:
                path = "rules"
                final, answer_source = template.text, "template"
                if use_model and missing:
                    # its answer cannot rest on measurements it did not ask for
                    notes.append(f"the model's tools ({', '.join(sorted({r.name for r in model_ok}))}) do not "
                                 f"measure what the question needs ({', '.join(sorted(missing))}): rule-routed")
                elif use_model:
                    notes.append("the model made no valid tool call for a question that needs one: rule-routed")
        if path == "rules" and self.config.phrasing == "model" and self._bound is not None and template is not None:
            t0 = time.perf_counter()
            worded = self._plain.invoke([SystemMessage(self.config.system_prompt + " Answer the question from the "
                                                       "tool results above."), *self.history, *turn])
            model_s += time.perf_counter() - t0
            text = _text(worded.content)
            check = self._ground(text, records) if text else None
            if text and not getattr(worded, "tool_calls", None) and check is not None and check.ok:
                final, answer_source = text, "model"
            else:
                notes.append("the model's wording of the rule-routed answer was rejected (empty, a tool call, or "
                             "it contradicts the tool results): the template answer is used")
        if final is None:
            if model_ok and template is not None:
                final, answer_source = template.text, "template"
            else:
                final, answer_source = _no_answer(self.config.max_steps if self._bound is not None else 0), "template"
                path = "model" if model_ok else "none"
        if self._bound is None and not plan.needs_tools:
            notes.append("no model is loaded and no rule matched the question")

        # identity policy, demographic phrasing
        matched = {f["name"] for r in records if r.ok and r.name == "identify" and r.result
                   for f in r.result.get("faces", []) if f.get("known")}
        self._matched |= matched
        if policy.is_identity_question(question) and not any(r.name == "identify" and r.ok for r in records) \
                and not any(i.name == "verify" for i in plan.intents):
            notes.append("identity question answered without a gallery match")
        names = self._gallery_names()
        pol = policy.apply(final, question, matched=self._matched, gallery_names=names,
                           template_answer=template.text if template is not None else None)
        if pol.answer != final:
            answer_source = "policy" if template is None or pol.answer != template.text else "template"
            final = pol.answer
        notes += pol.applied

        # evidence: what the template cited, else every fact of this turn's successful tool results
        if template is not None and answer_source == "template":
            evidence = template.evidence
        else:
            evidence = _dedupe(e for r in records if r.ok and r.result is not None for e in evidence_from(r.name, r.result))
        grounding = self._ground(final, records)
        tool_s = sum(r.seconds for r in records)
        turn.append(AIMessage(content=final))
        self.history.extend(turn)
        result = AgentResult(question, final, path, answer_source, stop, records, evidence,  # type: ignore[arg-type]
                             grounding, self.store.ids, steps, model_s, tool_s, time.perf_counter() - t_start, notes)
        self.on_event("answer", result.to_dict())
        return result

    def _rules(self, plan: planner.Plan, turn: list[BaseMessage]) -> tuple[planner.Phrase, list[ToolCallRecord]]:
        """Run the planned calls and phrase the answer; the calls join the history as if the model made them."""
        records: list[ToolCallRecord] = []
        texts, evidence = [], []
        for intent in plan.intents:
            n = None
            if intent.target.side and intent.target.side.startswith("right"):  # "on the right" needs the count
                det = self._run("detect", {"image": intent.target.image}, "rules")
                records.append(det)
                n = det.result["num_faces"] if det.ok and det.result else None
            for name, args in planner.tool_calls(intent, n):
                rec = self._run(name, args, "rules")
                records.append(rec)
                p = planner.phrase(intent, name, rec.result if rec.ok else {"error": rec.error})
                texts.append(p.text)
                evidence += p.evidence
        for rec in records:
            turn.append(AIMessage(content="", tool_calls=[{"name": rec.name, "args": rec.arguments, "id": rec.id,
                                                           "type": "tool_call"}]))
            turn.append(ToolMessage(content=_observation(rec), tool_call_id=rec.id, name=rec.name))
        return planner.Phrase(" ".join(dict.fromkeys(texts)), evidence), records

    def _gallery_names(self) -> list[str]:
        if self.store._gallery is None:
            return []
        try:
            return [p.name for p in self.store.gallery.list()]
        except Exception:  # an unreadable gallery only weakens the name check; identify reports the error
            return []

    def _ground(self, answer: str, records: list[ToolCallRecord]) -> GroundingReport:
        images = {r.result.get("image") or r.result.get("image_a") for r in records if r.ok and r.result}
        images |= {r.result.get("image_b") for r in records if r.ok and r.result and r.result.get("image_b")}
        analyses = {i: self.store.analysis(i, ()) for i in images if i in self.store}
        # the cached analysis holds what the tools ran (its steps); labels come only from what was measured
        identities = [(f.get("face_id"), f["name"]) for r in records if r.ok and r.name == "identify" and r.result
                      for f in r.result.get("faces", []) if f.get("known")]
        return check_answer(answer, labels_for(analyses, identities))

    def reset(self) -> None:
        """Forget the messages (the images and their cached analyses stay)."""
        self.history.clear()


def _extra_tool(spec: ToolSpec) -> dict:
    return spec.openai()


def _observation(rec: ToolCallRecord) -> str:
    from facellm.tools.registry import observation_json

    return observation_json(rec.result if rec.ok else {"error": rec.error})


def _json_str(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content.strip()
    return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text").strip()


def _no_answer(max_steps: int) -> str:
    if max_steps:
        return (f"I could not reach an answer within {max_steps} steps. Try asking about one thing at a time, "
                "e.g. how many faces there are, whether someone is smiling, or which way a head is turned.")
    return ("I can answer questions about the faces in your images: how many there are, smiles and eyes, head "
            "pose, perceived age and gender, image quality, whether two faces are the same person, and who someone "
            "is if they are enrolled in the gallery.")


def _dedupe(items: Iterable[Evidence]) -> list[Evidence]:
    seen: dict[str, Evidence] = {}
    for e in items:  # values may be lists or dicts (unhashable): key on their text
        seen.setdefault(repr(e), e)
    return list(seen.values())


__all__ = ["AgentConfig", "AgentResult", "FaceAgent", "ToolCallRecord", "langchain_tools"]


def _looks_broken(text: str) -> bool:
    t = text.strip()
    return len(t) < 2 or t.startswith(("{", "[")) or any(m in t for m in ("<tool_response>", "<tool_call>",
                                                                           "</tool_call>", "</tool_response>"))
