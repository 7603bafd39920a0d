"""Generated records -> the model's training format.

``load_records(DIR)`` reads the sharded JSONL (validating every record); ``training_messages(record, root)``
turns one record into the OpenAI-style messages ``FaceLLMProcessor`` takes: the ``<image>`` marker of the first
user turn becomes a ``{"type": "image", "image": path}`` part, and every conversation starts with a system turn
(agent traces: the system prompt plus the tools section of facellm/toolcall.py). ``training_examples`` also
yields the record's compact ``FaceAnalysis``, so training need not re-run the tools.

Tool calls come in one of two equivalent forms:

* ``tool_format="openai"`` (default): assistant ``tool_calls`` and one ``tool`` message per result, for the
  processor's default template ``facellm.toolcall.CHAT_TEMPLATE`` (which renders exactly ``render_chatml``'s text)
  or an OpenAI-style API;
* ``tool_format="text"``: assistant turns hold the ``<tool_call>`` blocks in their text and tool turns the
  ``<tool_response>`` blocks, so a plain ChatML template (the LM's own, ``chat_template="lm"``) renders the
  same text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facellm.toolcall import DEFAULT_SYSTEM, IMAGE_TOKEN, tools_section
from facellm.tools.schema import FaceAnalysis

from .schema import Record, to_openai

SHARD_GLOB = "part-*.jsonl"


class RecordFileError(ValueError):
    """A shard line is not a valid record; the message names the file and line."""


def shard_files(out: str | Path) -> list[Path]:
    folder = Path(out) / "shards"
    if not folder.is_dir():
        raise FileNotFoundError(f"{out} has no shards/ folder: is it the --out folder of `facellm data generate`?")
    return sorted(folder.glob(SHARD_GLOB))


def load_records(out: str | Path, *, split: str | None = None, style: str | None = None) -> Iterator[Record]:
    """Every complete record on disk (a line cut short by a kill is skipped), optionally one split / style."""
    for path in shard_files(out):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    continue  # the unfinished last line of a killed run; the resume truncates it
                try:
                    rec = Record.model_validate_json(line)
                except ValueError as e:
                    raise RecordFileError(f"{path.name} line {n}: not a valid record: {str(e)[:300]}") from None
                if (split is None or rec.split == split) and (style is None or rec.style == style):
                    yield rec


def system_prompt(record: Record) -> str:
    if record.tools:
        from facellm.tools.registry import openai_tools

        return DEFAULT_SYSTEM + "\n\n" + tools_section(openai_tools(record.tools))
    return DEFAULT_SYSTEM


def image_path(record: Record, root: str | Path) -> str:
    p = Path(record.image.path)
    return str(p if p.is_absolute() else (Path(root) / p).resolve())


def training_messages(record: Record, root: str | Path, *,
                      tool_format: Literal["text", "openai"] = "openai") -> list[dict]:
    """The record as processor messages (see the module docstring)."""
    if tool_format not in ("text", "openai"):
        raise ValueError("tool_format must be 'text' or 'openai'")
    msgs: list[dict] = [{"role": "system", "content": system_prompt(record)}]
    if tool_format == "openai":
        body = to_openai(record.conversations)
    else:
        role = {"human": "user", "gpt": "assistant", "tool": "tool", "system": "system"}
        body = [{"role": role[t.from_], "content": t.value} for t in record.conversations]
    body = [m for m in body if m["role"] != "system"]  # the record's own system turn, if any, is replaced
    placed = False
    for m in body:
        if m["role"] == "user" and not placed and isinstance(m["content"], str) and \
                m["content"].startswith(IMAGE_TOKEN):
            text = m["content"][len(IMAGE_TOKEN):].lstrip("\n")
            m["content"] = [{"type": "image", "image": image_path(record, root)}, {"type": "text", "text": text}]
            placed = True
        elif isinstance(m.get("content"), str) and IMAGE_TOKEN in m["content"]:
            raise ValueError(f"record {record.id}: {IMAGE_TOKEN} may only open the first user turn")
    msgs.extend(body)
    return msgs


@dataclass
class TrainingExample:
    id: str
    messages: list[dict]
    analysis: FaceAnalysis | None  # the compact tool output stored in the record (no mesh: re-run "mesh" if needed)
    style: str
    split: str


def training_examples(out: str | Path, *, split: str | None = "train", style: str | None = None,
                      tool_format: Literal["text", "openai"] = "openai") -> Iterator[TrainingExample]:
    """Processor-ready examples of one split (``None``: all) of a generated folder."""
    for rec in load_records(out, split=split, style=style):
        yield TrainingExample(rec.id, training_messages(rec, out, tool_format=tool_format), rec.faces, rec.style,
                              rec.split)


def hf_json_files(out: str | Path) -> list[str]:
    """The shard paths for ``datasets.load_dataset("json", data_files=...)``."""
    return [str(p) for p in shard_files(out)]


def to_jsonl(records: Iterable[Record], path: str | Path) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.model_dump(mode="json", by_alias=True), ensure_ascii=False) + "\n")
            n += 1
    return n
