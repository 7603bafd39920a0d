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
    category: str = ""
    num_faces: int = 0  # from the record's compact analysis (for length estimates)
    records: int = 1  # data_gen records in this example (> 1 when several were packed into one conversation)
    tool_attribute: bool = False  # asks a perceived age / gender / expression that no human labelled (a tool's answer)

    def text_tokens(self) -> int:
        """A cheap estimate (no tokenizer) of the text's tokens: ~3 characters per token, plus the system turn
        and ~80 tokens per offered tool signature."""
        return sum(len(_text_of(m)) for m in self.messages) // 3 + 70 + 80 * len(self.tools)

    def approx_tokens(self, image_tokens: int, face_tokens: int = 14) -> int:
        """Estimated sequence length (for length grouping and packing limits): text + image placeholder spans."""
        images = sum(_image_parts(m) for m in self.messages)
        return self.text_tokens() + images * (image_tokens + face_tokens * max(1, min(self.num_faces, 8)))


def _to_messages(record: dict, image_path: str, folder: Path | None = None) -> list[dict] | None:
    """The record's conversation as training messages, answers in the model's own voice (None: not trainable).

    The k-th ``<image>`` is ``meta.images[k]`` when the record has several images (two-photo questions); a
    relative one is inside the data folder ``folder``."""
    from facellm.data_gen.model_voice import model_voice
    from facellm.data_gen.schema import Turn, to_openai

    msgs = to_openai([Turn.model_validate(t) for t in record["conversations"]])
    images = (record.get("meta") or {}).get("images") or None  # absolute, or relative to the data folder
    if images and folder is not None:
        images = [p if Path(p).is_absolute() else str(folder / p) for p in images]
    out, seen_images = [], 0
    for m in msgs:
        if m["role"] == "assistant" and isinstance(m.get("content"), str) and m["content"]:
            voiced = model_voice(m["content"])
            if voiced is None:
                return None
            m = {**m, "content": voiced}
        if m["role"] == "user" and isinstance(m.get("content"), str) and "<image>" in m["content"]:
            parts: list[dict] = []
            for k, piece in enumerate(m["content"].split("<image>")):
                if k:
                    path = images[seen_images] if images and seen_images < len(images) else image_path
                    seen_images += 1
                    parts.append({"type": "image", "image": path})
                if piece.strip("\n"):
                    parts.append({"type": "text", "text": piece.strip("\n")})
            m = {**m, "content": parts}
        out.append(m)
    return out


def _in_validation(group: str) -> bool:
    import hashlib

    return int(hashlib.sha256(f"validation:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < VALIDATION_SHARE


def load_examples(folders: list[str | Path], splits: tuple[str, ...] = ("train",),
                  snapshot: dict[str, int] | None = None) -> list[Example]:
    """Every record of the given splits in the folders (data_gen output folders: records in ``shards/``).

    The trainer never asks for the test split (evaluation tools may). When the data has no validation split, a
    fixed 5% of the train split's photo groups serve as one ("validation" here) and are left out of "train".
    ``snapshot`` (from ``snapshot_shards``): read only these shards' first lines (data_gen may still be adding)."""
    return select_splits(read_examples(folders, snapshot, include_test="test" in splits), splits)


def select_splits(examples: list[Example], splits: tuple[str, ...]) -> list[Example]:
    if not any(e.split == "validation" for e in examples):
        for e in examples:
            if e.split == "train" and _in_validation(e.group):
                e.split = "validation"
    return [e for e in examples if e.split in splits]


def _shards(folder: Path) -> list[Path]:
    shards = sorted(folder.glob(SHARD_GLOB)) + sorted(folder.glob(f"shards/{SHARD_GLOB}"))
    if not shards:
        raise FileNotFoundError(f"{folder} has no {SHARD_GLOB} record files: build data with "
                                "`facellm data generate --out DIR` first")
    return shards


def snapshot_shards(folders: list[str | Path]) -> dict[str, int]:
    """Shard file -> its complete lines now. A run reads only these, so a resumed run sees the same records
    while data_gen goes on appending (a half-written last line is not counted)."""
    out = {}
    for folder in folders:
        for shard in _shards(Path(folder).expanduser()):
            data = shard.read_bytes()
            out[str(shard)] = data.count(b"\n")
    return out


# question categories whose answer is one perceived attribute (data_gen's faceinstruct / shortform categories)
CATEGORY_ATTRIBUTE = {"age_number": "age", "age_estimation": "age", "age_group": "age", "gender": "gender",
                      "expression_word": "expression", "expression_recognition": "expression"}


def _tool_attribute(rec: dict) -> bool:
    """True when the record asks for an attribute that no human labelled in it (its answer is a tool's)."""
    need = CATEGORY_ATTRIBUTE.get(rec.get("category", ""))
    if need is None:
        return False
    return not any(lb.get("kind") == "human" and lb.get("name") == need for lb in rec.get("labels") or [])


def read_examples(folders: list[str | Path], snapshot: dict[str, int] | None = None,
                  include_test: bool = False) -> list[Example]:
    """Every record in the folders (or in the snapshot's lines of them); test records only when asked."""
    out: list[Example] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        shards = _shards(folder)
        if snapshot is not None:
            gone = [k for k in snapshot if Path(k).parent in (folder, folder / "shards") and not Path(k).is_file()]
            if gone:
                raise FileNotFoundError(f"the run's data snapshot lists {gone[0]}, which is gone")
            shards = [sh for sh in shards if str(sh) in snapshot]
        for shard in shards:
            limit = snapshot[str(shard)] if snapshot is not None else None
            with shard.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if limit is not None and n > limit:
                        break
                    if not line.strip() or (not include_test and '"split":"test"' in line):
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        raise ValueError(f"{shard}:{n}: not a JSON record") from None
                    if rec.get("split") == "test" and not include_test:
                        continue
                    img = Path(rec["image"]["path"])
                    img = img if img.is_absolute() else folder / img
                    msgs = _to_messages(rec, str(img), folder)
                    if msgs is None:  # its answer is about the dataset's annotation (data_gen/model_voice.py)
                        continue
                    answers = [m["content"] for m in msgs if m["role"] == "assistant" and m.get("content")]
                    faces = rec.get("faces") or {}
                    out.append(Example(id=rec["id"], style=rec["style"], split=rec["split"], image=str(img),
                                       sha256=rec["image"]["sha256"], group=rec.get("group") or rec["id"],
                                       messages=msgs, tools=rec.get("tools") or [],
                                       answer=answers[-1] if answers else "", category=rec.get("category", ""),
                                       num_faces=len(faces.get("faces") or []),
                                       tool_attribute=_tool_attribute(rec)))
    return out


def _text_of(message: dict) -> str:
    c = message.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return " ".join(p.get("text") or "" for p in c if isinstance(p, dict))
    return str(message.get("tool_calls") or "")


def _image_parts(message: dict) -> int:
    c = message.get("content")
    return sum(1 for p in c if isinstance(p, dict) and p.get("type") == "image") if isinstance(c, list) else 0


def _without_image(message: dict) -> dict:
    c = message["content"]
    return {**message, "content": [p for p in c if not (isinstance(p, dict) and p.get("type") == "image")]}


def pack_examples(examples: list[Example], max_records: int, max_tokens: int, image_tokens: int,
                  styles: tuple[str, ...] | None = None) -> list[Example]:
    """Several records about the same image, of the same style, as ONE multi-turn conversation.

    The image and the system turn are paid once; every assistant turn keeps its label. A pack never holds
    two records of the same question category, so a later turn cannot just copy an earlier answer instead of
    looking at the image. Agent traces are not packed by default (a second trace would see the first one's
    tool results). ``styles``: the styles to pack (default: all but agent). Deterministic: data order."""
    if max_records <= 1:
        return list(examples)
    styles = tuple(styles) if styles is not None else ("fairfacegpt", "faceinstruct", "facecaption")
    groups: dict[tuple, list[Example]] = {}
    for e in examples:
        packable = (e.style in styles and e.messages and e.messages[0]["role"] == "user"
                    and _image_parts(e.messages[0]) == 1 and sum(_image_parts(m) for m in e.messages) == 1)
        key = (e.sha256, e.style, tuple(e.tools)) if packable else ("solo", e.id)
        groups.setdefault(key, []).append(e)
    out: list[Example] = []
    for members in groups.values():
        packs: list[list[Example]] = []
        for e in members:
            for pk in packs:
                size = pk[0].approx_tokens(image_tokens) + sum(x.text_tokens() - 70 for x in pk[1:])
                if (len(pk) < max_records and not any(e.category and x.category == e.category for x in pk)
                        and size + e.text_tokens() - 70 <= max_tokens):
                    pk.append(e)
                    break
            else:
                packs.append([e])
        for pk in packs:
            if len(pk) == 1:
                out.append(pk[0])
                continue
            msgs = list(pk[0].messages)
            for e in pk[1:]:
                msgs += [_without_image(e.messages[0])] + list(e.messages[1:])
            first = pk[0]
            out.append(Example(id="+".join(e.id for e in pk), style=first.style, split=first.split,
                               image=first.image, sha256=first.sha256, group=first.group, messages=msgs,
                               tools=first.tools, answer=pk[-1].answer, category=first.category,
                               num_faces=first.num_faces, records=len(pk)))
    return out


class LengthGroupedOrder:
    """Position -> example index, like ``MixtureOrder``, but inside each window of ``window`` positions the
    examples are sorted by length and cut into batches of ``batch`` (whose order is then shuffled), so that
    a padded batch wastes little. Still a pure function of (seed, position): resume sees the same batches."""

    def __init__(self, order: "MixtureOrder", lengths: list[int], batch: int, window_batches: int = 16) -> None:
        self.order, self.lengths, self.batch = order, lengths, batch
        self.window = batch * window_batches
        self.epoch_len = order.epoch_len
        self._cache: tuple[int, list[int]] | None = None

    def _window(self, w: int) -> list[int]:
        if self._cache and self._cache[0] == w:
            return self._cache[1]
        idx = [self.order[w * self.window + i] for i in range(self.window)]
        idx.sort(key=lambda i: self.lengths[i])
        chunks = [idx[k:k + self.batch] for k in range(0, len(idx), self.batch)]
        random.Random(self.order.seed * 7919 + w).shuffle(chunks)
        flat = [i for c in chunks for i in c]
        self._cache = (w, flat)
        return flat

    def __getitem__(self, position: int) -> int:
        w, k = divmod(position, self.window)
        return self._window(w)[k]


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

    def __init__(self, processor, folder: Path, data_folders: list[Path], extra: list[Path] = ()) -> None:
        self.processor = processor
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sources = [self.folder] + [Path(d).expanduser() / "cache" / "analysis" for d in data_folders] + \
            [Path(d).expanduser() for d in extra]
        self.computed = 0  # images the face tools had to analyse here (no data_gen analysis found)
        self.memory: dict[str, FaceAnalysis] = {}

    def get(self, ex: Example) -> FaceAnalysis:
        return self.get_image(ex.image, ex.sha256)

    def get_image(self, image: str, sha256: str) -> FaceAnalysis:
        """The analysis of one image (by its sha256), read from a cache or computed once and kept."""
        hit = self.memory.get(sha256)
        if hit is not None:
            return hit
        for src in self.sources:
            f = src / f"{sha256}.json"
            if f.is_file():
                fa = FaceAnalysis.from_json(f.read_text())
                if all(face.groups for face in fa.faces):  # the landmark groups the region tokens need
                    break
        else:
            from facellm.tools.image_io import load_image

            fa = self.processor.analyze(load_image(image))
            self.computed += 1
            tmp = self.folder / f"{sha256}.json.tmp"
            tmp.write_text(fa.to_json())
            tmp.replace(self.folder / f"{sha256}.json")
        self.memory[sha256] = fa
        return fa
