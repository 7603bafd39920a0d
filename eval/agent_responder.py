"""The agent (``facellm ask --agent``) as a system under test: one fresh conversation per item.

It answers the item's question text (the same text the model sees) with the item's images, choosing and
running the face tools itself; its tool calls go into the transcript, so tool items are scored on what the
agent called. It runs whole items (``run_item``) instead of single turns: the runner's tool loop is the
model's, the agent has its own.
"""

from __future__ import annotations

import json
import threading
import time

from .items import EvalItem
from .prompts import item_text


class AgentResponder:
    with_images = True

    def __init__(self, chat_model=None, *, name: str = "agent", identity: str = "", mode: str = "model_first",
                 max_steps: int = 4, gallery=None) -> None:
        self.chat_model = chat_model  # a FaceLLMChatModel (or any LangChain chat model); None: rules only
        self.name = name
        self.mode = mode
        self.max_steps = max_steps
        self.gallery = gallery
        self._identity = identity or name
        self._lock = threading.Lock()  # one in-process model: one conversation at a time

    def identity(self) -> str:
        return json.dumps(["agent", self._identity, self.mode, self.max_steps])

    def respond(self, item: EvalItem, messages: list[dict], tools: list[dict] | None):  # pragma: no cover
        raise NotImplementedError("the agent answers whole items: use run_item")

    def run_item(self, item: EvalItem, setting: str) -> dict:
        from facellm.agent.loop import AgentConfig, FaceAgent

        t0 = time.perf_counter()
        question = item_text(item, setting)
        images = [] if item.meta.get("text_only") else list(item.images)
        with self._lock:
            agent = FaceAgent(self.chat_model, images=images, gallery=self.gallery,
                              config=AgentConfig(mode=self.mode, max_steps=self.max_steps))  # type: ignore[arg-type]
            result = agent.ask(question)
        calls = [{"name": r.name, "arguments": r.arguments, "known_tool": True, "valid_args": r.ok or r.result is not None,
                  "error": r.error, "result": r.result, "origin": r.origin} for r in result.tool_calls]
        evidence = [{"name": e.attribute, "value": e.value, "face_id": e.face_id, "source": e.tool, "kind": "model",
                     "probability": e.probability} for e in result.evidence if _scalar(e.value)]
        return {"item": item.id, "model": self.name, "setting": setting,
                "turns": [{"content": result.answer, "tool_calls": [c["name"] for c in calls]}],
                "tool_calls": calls, "tool_evidence": _valid_labels(evidence), "final": result.answer, "error": None,
                "agent": {"path": result.path, "answer_source": result.answer_source, "steps": result.steps,
                          "notes": result.notes},
                "seconds": round(time.perf_counter() - t0, 3)}


def _scalar(v: object) -> bool:
    return isinstance(v, (str, int, float, bool)) or (isinstance(v, list) and len(v) == 2
                                                       and all(isinstance(x, (int, float)) for x in v))


def _valid_labels(evidence: list[dict]) -> list[dict]:
    """Evidence as data_gen Label dicts where it fits the schema (the grounding check reads those)."""
    from facellm.data_gen.schema import Label

    out = []
    for e in evidence:
        try:
            out.append(Label.model_validate(e).model_dump())
        except ValueError:
            continue
    return out
