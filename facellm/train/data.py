"""Training data: data_gen records -> conversations the FaceLLM processor takes, in a resumable mixture order.

Records are read from data_gen output folders (``part-*.jsonl``, DESIGN.md contract 4). Each becomes OpenAI
messages (the agent traces' tool calls and tool results included, so the LM learns the exact tool-call text
the server and the agent parse) with the record's image as an image part, plus the tools its system turn
offered.

The order of examples is a pure function of (seed, position): epoch ``e`` is the mixture (each style's
records repeated ``weight`` times, a seeded subset for the fraction) shuffled with ``seed + e``. A run resumed
at position ``p`` therefore sees exactly the examples an uninterrupted run would have.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from facellm.tools.schema import FaceAnalysis

SHARD_GLOB = "part-*.jsonl"
VALIDATION_SHARE = 0.05  # of the photo groups, when the data has no validation split of its own


@dataclass
class Example:
    id: str
    style: str
    split: str
    image: str  # absolute path
    sha256: str
    group: str  # the split unit (photo or identity): validation carved from train never shares one
    messages: list[dict]  # OpenAI-style; image parts carry the path
    tools: list[str] = field(default_factory=list)
    answer: str = ""  # the final assistant answer (for the answer check)


def _to_messages(record: dict, image_path: str) -> list[dict]:
    from facellm.data_gen.schema import Turn, to_openai

    msgs = to_openai([Turn.model_validate(t) for t in record["conversations"]])
    out = []
    for m in msgs:
        if m["role"] == "user" and isinstance(m.get("content"), str) and "<image>" in m["content"]:
            parts: list[dict] = []
            for k, piece in enumerate(m["content"].split("<image>")):
                if k:
                    parts.append({"type": "image", "image": image_path})
                if piece.strip("\n"):
                    parts.append({"type": "text", "text": piece.strip("\n")})
            m = {**m, "content": parts}
        out.append(m)
    return out


def _in_validation(group: str) -> bool:
    import hashlib

    return int(hashlib.sha256(f"validation:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < VALIDATION_SHARE


def load_examples(folders: list[str | Path], splits: tuple[str, ...] = ("train",)) -> list[Example]:
    """Every record of the given splits in the folders (data_gen output folders: records in ``shards/``).

    The test split is never read for training. When the data has no validation split, a fixed 5% of the
    train split's photo groups serve as one ("validation" here) and are left out of "train"."""
    out = _read(folders)
    if not any(e.split == "validation" for e in out):
        for e in out:
            if e.split == "train" and _in_validation(e.group):
                e.split = "validation"
    return [e for e in out if e.split in splits]


def _read(folders: list[str | Path]) -> list[Example]:
    out: list[Example] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        shards = sorted(folder.glob(SHARD_GLOB)) + sorted(folder.glob(f"shards/{SHARD_GLOB}"))
        if not shards:
            raise FileNotFoundError(f"{folder} has no {SHARD_GLOB} record files: build data with "
                                    "`facellm data generate --out DIR` first")
        for shard in shards:
            with shard.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        raise ValueError(f"{shard}:{n}: not a JSON record") from None
                    img = Path(rec["image"]["path"])
                    img = img if img.is_absolute() else folder / img
                    msgs = _to_messages(rec, str(img))
                    answers = [m["content"] for m in msgs if m["role"] == "assistant" and m.get("content")]
                    out.append(Example(id=rec["id"], style=rec["style"], split=rec["split"], image=str(img),
                                       sha256=rec["image"]["sha256"], group=rec.get("group") or rec["id"],
                                       messages=msgs, tools=rec.get("tools") or [],
                                       answer=answers[-1] if answers else ""))
    return out


class MixtureOrder:
    """Position -> example index, deterministic in (seed, position)."""

    def __init__(self, examples: list[Example], mixture: dict[str, float], seed: int) -> None:
        self.by_style: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            self.by_style.setdefault(ex.style, []).append(i)
        missing = [s for s, w in mixture.items() if w > 0 and s not in self.by_style]
        if missing:
            raise ValueError(f"the mixture asks for style(s) {missing} but the data has only "
                             f"{sorted(self.by_style)}")
        self.mixture = {s: w for s, w in mixture.items() if w > 0}
        self.seed = seed
        self.epoch_len = sum(int(w) * len(self.by_style[s]) + round((w % 1) * len(self.by_style[s]))
                             for s, w in self.mixture.items())
        if self.epoch_len == 0:
            raise ValueError("the mixture selects no examples")
        self._cache: tuple[int, list[int]] | None = None

    def epoch(self, e: int) -> list[int]:
        if self._cache and self._cache[0] == e:
            return self._cache[1]
        order: list[int] = []
        for style in sorted(self.mixture):
            idx, w = self.by_style[style], self.mixture[style]
            order += idx * int(w)
            frac = round((w % 1) * len(idx))
            if frac:
                order += random.Random(f"{self.seed}:{e}:{style}").sample(idx, frac)
        random.Random(self.seed * 1_000_003 + e).shuffle(order)
        self._cache = (e, order)
        return order

    def __getitem__(self, position: int) -> int:
        e, k = divmod(position, self.epoch_len)
        return self.epoch(e)[k]


class AnalysisCache:
    """The face tools' analysis of each training image (the mesh the region encoder needs), computed once.

    Reuses data_gen's full analyses when the data folder has them (``cache/analysis/<sha256>.json``), and
    keeps its own under the run folder, so a resumed or repeated run never recomputes them."""

    def __init__(self, processor, folder: Path, data_folders: list[Path]) -> None:
        self.processor = processor
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sources = [self.folder] + [Path(d).expanduser() / "cache" / "analysis" for d in data_folders]
        self.memory: dict[str, FaceAnalysis] = {}

    def get(self, ex: Example) -> FaceAnalysis:
        hit = self.memory.get(ex.sha256)
        if hit is not None:
            return hit
        for src in self.sources:
            f = src / f"{ex.sha256}.json"
            if f.is_file():
                fa = FaceAnalysis.from_json(f.read_text())
                if all(face.groups for face in fa.faces):  # the landmark groups the region tokens need
                    break
        else:
            from facellm.tools.image_io import load_image

            fa = self.processor.analyze(load_image(ex.image))
            tmp = self.folder / f"{ex.sha256}.json.tmp"
            tmp.write_text(fa.to_json())
            tmp.replace(self.folder / f"{ex.sha256}.json")
        self.memory[ex.sha256] = fa
        return fa
