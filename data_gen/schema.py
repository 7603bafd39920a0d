"""The instruction-data record (DESIGN.md contract 4): one image, its evidence, labels with provenance, and a
LLaVA-style conversation.

Conversations are stored LLaVA / ShareGPT style, ``[{"from": "human"|"gpt"|"tool"|"system", "value": ...}]``:
the first human turn starts with ``<image>\\n``; in agent traces a ``gpt`` turn holds the exact
``<tool_call>`` text and a ``tool`` turn the exact ``<tool_response>`` text (facellm/toolcall.py), so the
stored text is what the LM is trained on. ``to_openai`` / ``from_openai`` convert to and from OpenAI
``role`` / ``content`` messages with ``tool_calls``; ``training_text`` renders the ChatML training string.

Labels keep human annotations and model estimates apart: ``source`` is ``"human"`` (a dataset's annotation
or a by-eye note), ``"transform"`` (known from how an augmented image was made) or the name of the model
that measured it; ``kind`` follows from it and is checked.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facellm.toolcall import IMAGE_TOKEN, parse_tool_calls, parse_tool_responses, render_chatml, render_tool_calls, \
    render_tool_response
from facellm.tools.schema import FaceAnalysis

RECORD_VERSION = "1.0"
STYLES = ("fairfacegpt", "faceinstruct", "facecaption", "agent")
SPLITS = ("train", "validation", "test")
Style = Literal["fairfacegpt", "faceinstruct", "facecaption", "agent"]
Split = Literal["train", "validation", "test"]
LabelKind = Literal["human", "transform", "model"]
Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageRef(_Model):
    path: str = Field(description="image file, relative to the dataset folder or absolute")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file's bytes")
    width: int | None = None
    height: int | None = None


class Label(_Model):
    """One fact about the image or one face, and where it came from."""

    name: str = Field(description="e.g. 'num_faces', 'age', 'perceived_gender', 'expression', 'smile', 'eyeglasses'")
    value: Scalar | list[float] = Field(description="the label's value; age ranges as [low, high]")
    face_id: int | None = Field(default=None, description="the face (FaceAnalysis id) it is about; None: the image")
    source: str = Field(description="'human', 'transform', or the model that produced it")
    kind: LabelKind
    probability: float | None = Field(default=None, ge=0.0, le=1.0, description="model estimates only")

    @model_validator(mode="after")
    def _provenance(self) -> Label:
        expected = self.source if self.source in ("human", "transform") else "model"
        if self.kind != expected:
            raise ValueError(f"label {self.name!r}: source {self.source!r} means kind {expected!r}, not {self.kind!r}")
        if self.kind == "human" and self.probability is not None:
            raise ValueError(f"label {self.name!r}: a human label has no model probability")
        return self


def human(name: str, value: Any, face_id: int | None = None) -> Label:
    return Label(name=name, value=value, face_id=face_id, source="human", kind="human")


def transform_label(name: str, value: Any, face_id: int | None = None) -> Label:
    return Label(name=name, value=value, face_id=face_id, source="transform", kind="transform")


def estimate(name: str, value: Any, source: str, probability: float | None = None, face_id: int | None = None) -> Label:
    return Label(name=name, value=value, face_id=face_id, source=source, kind="model",
                 probability=None if probability is None else round(float(probability), 4))


class Turn(_Model):
    from_: Literal["system", "human", "gpt", "tool"] = Field(alias="from")
    value: str

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Record(_Model):
    record_version: str = RECORD_VERSION
    id: str
    image: ImageRef
    faces: FaceAnalysis | None = Field(default=None, description="the tools' measurements (compacted)")
    labels: list[Label] = Field(default_factory=list)
    conversations: list[Turn]
    style: Style
    category: str = Field(description="question category within the style, e.g. 'expression', 'head_pose'")
    tools: list[str] = Field(default_factory=list, description="agent traces: the tools offered in the system turn")
    generator: str = Field(description="what wrote the text, e.g. 'template-v1' or 'teacher:<model>'")
    split: Split
    source: str = Field(description="dataset or source name, e.g. 'offline', 'fairface'")
    group: str = Field(description="the split unit: the original photo, or the identity when known")
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        # FaceAnalysis serialises its computed num_faces; it is not an input field
        if isinstance(data, dict) and isinstance(data.get("faces"), dict) and "num_faces" in data["faces"]:
            data = {**data, "faces": {k: v for k, v in data["faces"].items() if k != "num_faces"}}
        return data

    @model_validator(mode="after")
    def _check(self) -> Record:
        turns = self.conversations
        if not turns or not any(t.from_ == "gpt" for t in turns):
            raise ValueError("a record needs at least one gpt turn")
        first_human = next((t for t in turns if t.from_ == "human"), None)
        if first_human is None or not first_human.value.startswith(IMAGE_TOKEN):
            raise ValueError(f"the first human turn must start with {IMAGE_TOKEN!r}")
        if any(t.from_ == "tool" for t in turns) and self.style != "agent":
            raise ValueError("only agent traces have tool turns")
        for t in turns:
            if t.from_ == "gpt":
                parsed = parse_tool_calls(t.value)
                if parsed.errors:
                    raise ValueError(f"malformed tool call in a gpt turn: {parsed.errors[0]}")
        return self

    # -- views ---------------------------------------------------------------------------------------

    def human_labels(self) -> list[Label]:
        return [lb for lb in self.labels if lb.kind == "human"]

    def answers(self) -> list[str]:
        """The final (non-tool-call) assistant texts."""
        out = []
        for t in self.conversations:
            if t.from_ == "gpt":
                content = parse_tool_calls(t.value).content
                if content:
                    out.append(content)
        return out

    def questions(self) -> list[str]:
        return [t.value.replace(IMAGE_TOKEN, "").strip() for t in self.conversations if t.from_ == "human"]

    def to_openai(self) -> list[dict]:
        return to_openai(self.conversations)

    def training_text(self, tools: list[dict] | None = None) -> str:
        """The ChatML text the LM trains on (the system turn offers ``tools``, default: this record's)."""
        if tools is None and self.tools:
            from facellm.tools.registry import openai_tools

            tools = openai_tools(self.tools)
        return render_chatml(self.to_openai(), tools or None)


_ROLE = {"system": "system", "human": "user", "gpt": "assistant", "tool": "tool"}
_FROM = {v: k for k, v in _ROLE.items()}


def to_openai(turns: list[Turn]) -> list[dict]:
    """LLaVA turns -> OpenAI messages (assistant ``tool_calls`` parsed out, one ``tool`` message per result)."""
    msgs: list[dict] = []
    pending: list[str] = []  # ids of the last assistant message's calls, matched to the results in order
    for t in turns:
        role = _ROLE[t.from_]
        if role == "assistant":
            parsed = parse_tool_calls(t.value)
            msg: dict = {"role": "assistant", "content": parsed.content or None}
            if parsed.tool_calls:
                for k, c in enumerate(parsed.tool_calls):
                    c.id = f"call_{len(msgs)}_{k}"
                msg["tool_calls"] = [c.to_openai() for c in parsed.tool_calls]
                pending = [c.id for c in parsed.tool_calls]
            msgs.append(msg)
        elif role == "tool":
            for k, result in enumerate(parse_tool_responses(t.value)):
                content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False,
                                                                            separators=(",", ":"))
                msgs.append({"role": "tool", "tool_call_id": pending[k] if k < len(pending) else f"call_{k}",
                             "content": content})
        else:
            msgs.append({"role": role, "content": t.value})
    return msgs


def from_openai(messages: list[dict]) -> list[Turn]:
    """OpenAI messages -> LLaVA turns (the inverse of ``to_openai``; consecutive tool results join one turn)."""
    turns: list[Turn] = []
    for m in messages:
        role = m["role"]
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = "".join(p["text"] if p.get("type") == "text" else IMAGE_TOKEN + "\n" for p in content)
        if role == "tool":
            block = render_tool_response(content)
            if turns and turns[-1].from_ == "tool":
                turns[-1] = Turn(**{"from": "tool", "value": turns[-1].value + "\n" + block})
            else:
                turns.append(Turn(**{"from": "tool", "value": block}))
            continue
        if role == "assistant" and m.get("tool_calls"):
            calls = render_tool_calls(m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        turns.append(Turn(**{"from": _FROM[role], "value": content}))
    return turns


def turn(frm: str, value: str) -> Turn:
    return Turn(**{"from": frm, "value": value})
