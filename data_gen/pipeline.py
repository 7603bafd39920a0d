"""``generate``: source items -> evidence -> drafts (templates or teacher) -> fact check -> dedup -> records in
sharded JSONL, resumable after a kill at any point; then an HF dataset.

Resumability: every record id is a hash of (item key, style, index), so a rerun regenerates the same ids.
A unit (one source item) is written as whole lines with one ``write`` + fsync; a line cut short by a kill is
truncated away on restart. After its records are durable the unit's key goes to ``progress.log``: units
listed there are skipped, any other unit is regenerated and only records whose id is not yet on disk are
written. Nothing is lost and nothing is written twice. The question-dedup state is rebuilt from the
records on disk, so a resumed run keeps exactly what an uninterrupted run keeps.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .agent_traces import OFFLINE_GALLERY, agent_drafts, gallery_for, partner_pool, pick_partner
from .evidence import ANALYSIS_STEPS, AnalysisCache, assign_face_ids, atomic_write, compact, drop_hidden, file_sha256, model_labels
from .factcheck import check
from .facts import Facts
from .generators import generate_style
from .schema import STYLES, ImageRef, Label, Record, turn
from .sources import SourceItem, offline_items, stable_hash
from .templates import GENERATOR, TemplateTeacher

SHARD_GLOB = "part-*.jsonl"
SKIPPED_FILE = "skipped_inputs.jsonl"
# real face datasets whose photos are also composed into multi-face canvases and verification pairs
COMPOSED_SOURCES = ("facedata", "utkface", "fer2013", "fer", "celeba")
GALLERY_EVERY = 8  # real datasets: identity traces (a 100 ms descriptor each) on one image in 8
PARTNER_EVERY = 6  # real datasets: two-image (same person?) traces (two 100 ms descriptors) on one image in 6
HAIR_CALL = '"name": "hair"'  # a hair tool call as facellm.toolcall renders it
PAD_SHARE = 0.5  # a tight crop with no face found is analysed padded by half its size on each side


@dataclass
class GenerateConfig:
    source: str = "offline"
    path: str | None = None  # the dataset's local copy (all sources but offline)
    columns: dict[str, str] = field(default_factory=dict)  # table/HF column -> label name renames
    styles: tuple[str, ...] = STYLES
    out: Path = Path("data_out")
    seed: int = 0
    per_image: int = 4
    variants: int = 6
    composites: int = 4
    held_out: float = 0.2
    limit: int | None = None
    shard_size: int = 2000
    gallery: bool = True
    teacher_url: str | None = None
    teacher_model: str | None = None
    teacher_concurrency: int = 4
    workers: int = 0
    progress: bool = True
    export_hf: bool = True
    cache_dir: Path | None = None  # analyses by image sha256 (shareable between runs); default out/cache/analysis
    part: tuple[int, int] | None = None  # (i, n): only the units whose key hashes to i mod n (parallel runs)

    def identity(self) -> dict:
        """What must match for a run to resume into an existing folder."""
        return {"source": self.source, "path": None if self.path is None else str(Path(self.path).resolve()),
                "columns": dict(self.columns), "styles": list(self.styles), "seed": self.seed,
                "per_image": self.per_image, "variants": self.variants, "composites": self.composites,
                "held_out": self.held_out, "teacher": self.teacher_model if self.teacher_url else None,
                **({"part": list(self.part)} if self.part else {})}


@dataclass
class RunStats:
    units: int = 0
    skipped_units: int = 0
    written: int = 0
    already_written: int = 0
    rejected: int = 0
    duplicates: int = 0
    teacher_fallbacks: int = 0
    split_overrides: int = 0
    tool_ms: float = 0.0  # time the face tools took on images analysed in this run (cache misses)
    analysed: int = 0  # images analysed in this run
    failed_units: int = 0  # images that could not be read (listed in failed.jsonl; retried on resume)
    skipped_inputs: int = 0  # dataset files the adapter left out (listed in skipped_inputs.jsonl)
    padded: int = 0  # tight crops analysed padded because the detector found no face on them
    seconds: float = 0.0  # wall time of the generation loop
    by_style: dict = field(default_factory=dict)


# ------------------------------------------------------------------ splits and dedup


def assign_split(group: str, seed: int, held_out: float) -> str:
    """Hash-based, order-independent: the same group always lands in the same split."""
    u = stable_hash(seed, "split", group) / 2 ** 64
    return "test" if u < held_out else "train"


def finalize_splits(items: list[SourceItem], seed: int, held_out: float) -> int:
    """Give every item of a group one split, so no photo (or identity) straddles splits.

    A group takes the dataset's own split of its first item (by key) that has one, else a hash of the group.
    A source with a validation split but no test split (FairFace) holds its validation split out as ``test``:
    eval builds its benchmark from ``test``. Returns how many items had their dataset split overridden.
    """
    has_test = any(it.split == "test" for it in items)
    chosen: dict[str, str] = {}
    for it in sorted(items, key=lambda it: it.key):
        if it.split is not None and it.group not in chosen:
            chosen[it.group] = "test" if (it.split == "validation" and not has_test) else it.split
    moved = 0
    for it in items:
        split = chosen.get(it.group) or assign_split(it.group, seed, held_out)
        if it.split is not None and it.split != split and not (it.split == "validation" and split == "test"):
            moved += 1
        it.split = split
    return moved


_STOP = {"the", "a", "an", "this", "that", "in", "of", "is", "are", "please", "does", "do", "can", "you", "there",
         "to", "be", "for", "on", "me"}
_SYN = {"photo": "image", "picture": "image", "pic": "image", "people": "faces", "persons": "faces", "face": "faces",
        "person": "faces"}


def question_key(q: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", q.lower()).split())


def question_tokens(q: str) -> frozenset[str]:
    return frozenset(_SYN.get(w, w) for w in question_key(q).split() if w not in _STOP)


class Dedup:
    """Exact and near-duplicate questions per (image sha256, style): Jaccard of content words >= ``threshold``."""

    def __init__(self, threshold: float = 0.85) -> None:
        self.threshold = threshold
        self.seen: dict[tuple[str, str], list[tuple[str, frozenset[str]]]] = {}

    def is_dup(self, image_sha: str, style: str, question: str) -> bool:
        key, toks = question_key(question), question_tokens(question)
        for k, t in self.seen.get((image_sha, style), []):
            if k == key or (toks and t and len(toks & t) / len(toks | t) >= self.threshold):
                return True
        return False

    def add(self, image_sha: str, style: str, question: str) -> None:
        self.seen.setdefault((image_sha, style), []).append((question_key(question), question_tokens(question)))


def first_question(conversations: list[dict]) -> str:
    for t in conversations:
        if t["from"] == "human":
            return t["value"].replace("<image>", "").strip()
    return ""


# ------------------------------------------------------------------ the resumable writer


class ShardWriter:
    def __init__(self, folder: Path, shard_size: int) -> None:
        self.folder = folder / "shards"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.ids: set[str] = set()
        self.dedup = Dedup()
        self.progress_file = folder / "progress.log"
        self.done_units: set[str] = set()
        shards = sorted(self.folder.glob(SHARD_GLOB))
        for path in shards:
            self._recover(path)
        if self.progress_file.exists():
            self._truncate_partial(self.progress_file)
            self.done_units = set(self.progress_file.read_text().split("\n")) - {""}
        self.current = shards[-1] if shards else self.folder / "part-00000.jsonl"
        self.count = self._lines(self.current) if self.current.exists() else 0

    @staticmethod
    def _truncate_partial(path: Path) -> None:
        """Cut a last line left without its newline by a kill."""
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    @staticmethod
    def _lines(path: Path) -> int:
        with open(path, "rb") as f:
            return sum(1 for _ in f)

    def _recover(self, path: Path) -> None:
        self._truncate_partial(path)
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                self.ids.add(rec["id"])
                self.dedup.add(rec["image"]["sha256"], rec["style"], first_question(rec["conversations"]))

    def write_unit(self, unit_key: str, records: list[Record]) -> int:
        lines = []
        for r in records:
            lines.append(r.model_dump_json(by_alias=True) + "\n")
            self.ids.add(r.id)
        if lines:
            if self.count >= self.shard_size:
                n = int(self.current.stem.split("-")[1]) + 1
                self.current, self.count = self.folder / f"part-{n:05d}.jsonl", 0
            with open(self.current, "a", encoding="utf-8") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
            self.count += len(lines)
        with open(self.progress_file, "a", encoding="utf-8") as f:
            f.write(unit_key + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done_units.add(unit_key)
        return len(lines)


def read_records(out: str | Path) -> Iterable[Record]:
    from .loader import load_records

    return load_records(out)


# ------------------------------------------------------------------ one unit


def without_unmeasured_hair(drafts: list, steps) -> list:
    """Agent drafts (category, turns, ...) minus those that call the hair tool when the analysis ran without the
    face parser (48 px faces): the tool would report "no hair region", which is not what the photo shows."""
    if "parse" in steps:
        return drafts
    return [d for d in drafts if not any(HAIR_CALL in t.value for t in d[1] if t.from_ == "gpt")]


def _shown_path(path: str, out: Path) -> str:
    """A path as records store it: relative to the output folder when inside it (records do not depend on where
    the folder lives), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(out.resolve()))
    except ValueError:
        return str(p)


def _image_ref(path: str, sha: str, out: Path, fa) -> ImageRef:
    return ImageRef(path=_shown_path(path, out), sha256=sha, width=fa.image.width, height=fa.image.height)


def _facts_text(labels: list[Label]) -> str:
    return "; ".join(f"{'face ' + str(lb.face_id) + ' ' if lb.face_id else ''}{lb.name}={lb.value} ({lb.kind})"
                     for lb in labels)


class Generator:
    def __init__(self, cfg: GenerateConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.cache = AnalysisCache(cfg.cache_dir or self.out / "cache" / "analysis")
        self.teacher = None
        if cfg.teacher_url:
            from .teacher import OpenAITeacher

            self.teacher = OpenAITeacher(cfg.teacher_url, cfg.teacher_model or "default",
                                         concurrency=cfg.teacher_concurrency)
        self._gallery = None
        self.stats = RunStats()

    @property
    def gallery(self):
        if self._gallery is None and self.cfg.gallery and "agent" in self.cfg.styles:
            self._gallery = gallery_for(self.out, OFFLINE_GALLERY)
        return self._gallery

    def items(self) -> list[SourceItem]:
        from .adapters import items_from_spec

        cfg = self.cfg
        if cfg.source == "offline":
            items = offline_items(self.out, seed=cfg.seed, variants=cfg.variants, composites=cfg.composites,
                                  held_out=cfg.held_out, cache=self.cache)
        else:
            from tqdm import tqdm

            skipped: list[dict] = []
            items = list(tqdm(items_from_spec(cfg.source, cfg.path, self.out, columns=cfg.columns, skipped=skipped,
                                              seed=cfg.seed),
                              desc=f"reading {cfg.source}", unit="image", disable=not cfg.progress))
            self.stats.skipped_inputs = len(skipped)
            if skipped or (self.out / SKIPPED_FILE).exists():
                atomic_write(self.out / SKIPPED_FILE, "".join(json.dumps(s) + "\n" for s in skipped).encode())
        keys = [it.key for it in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"source {cfg.source!r} gives two items the same key; record ids would collide")
        self.stats.split_overrides = finalize_splits(items, cfg.seed, cfg.held_out)
        if cfg.composites > 0 and cfg.source in COMPOSED_SOURCES:
            # composed from photos of one split each (after the splits are final), so nothing straddles splits
            from .composites import multi_face_items, pair_items

            items += multi_face_items([it for it in items if "tight_crop" in it.meta], self.out, seed=cfg.seed)
            items += pair_items([it for it in items if it.source == "celeba"], self.out, self.cache, seed=cfg.seed)
        # a seeded order across the whole source (not its first files): a limited run, or the records written so
        # far by a long run, are a sample of every dataset, composite and pair kind
        items = sorted(items, key=lambda it: stable_hash(cfg.seed, "order", it.key))
        if cfg.limit:
            items = items[: cfg.limit]
        if cfg.part:  # one of n parallel runs (each its own --out): a fixed share of the units
            i, n = cfg.part
            items = [it for it in items if stable_hash("part", it.key) % n == i]
        if "agent" in cfg.styles:  # second photos for the agent's two-image questions
            self._partners = partner_pool(items, lambda it: it.split or assign_split(it.group, cfg.seed, cfg.held_out))
        return items

    def _padded(self, item: SourceItem, sha: str):
        """A tight crop the detector missed: analyse (and train on) a padded copy; the record says so."""
        from PIL import Image, ImageOps

        target = self.out / "images" / "padded" / f"{sha[:24]}.png"
        if not target.is_file():
            im = ImageOps.exif_transpose(Image.open(item.image_path)).convert("RGB")
            border = round(PAD_SHARE * max(im.size))
            mean = tuple(int(v) for v in im.resize((1, 1), Image.BILINEAR).getpixel((0, 0)))
            import io

            buf = io.BytesIO()
            ImageOps.expand(im, border=border, fill=mean).save(buf, format="PNG")
            atomic_write(target, buf.getvalue())
        item.meta = {**item.meta, "padded_from": item.meta.get("dataset_file", item.image_path),
                     "padding": f"{PAD_SHARE:g} of the crop on each side (no face found on the tight crop)"}
        item.image_path = str(target)
        self.stats.padded += 1
        new_sha = file_sha256(target)
        return new_sha, self.cache.get(target, new_sha, item.meta.get("analysis_steps"))

    def _partner(self, item: SourceItem, split: str):
        """(path, analysis) of a second photo for the agent's two-image questions, or None."""
        other = pick_partner(item, getattr(self, "_partners", {}), split, self.cfg.seed)
        if other is None:
            return None
        try:
            pfa = self.cache.get(other.image_path, file_sha256(other.image_path))
        except (OSError, ValueError):
            return None
        return (other.image_path, pfa) if pfa.faces else None

    def unit_records(self, item: SourceItem, writer: ShardWriter) -> list[Record]:
        cfg = self.cfg
        if item.build is not None:
            item.build()
        sha = file_sha256(item.image_path)
        fa = self.cache.get(item.image_path, sha, item.meta.get("analysis_steps"))
        if not fa.faces and item.meta.get("tight_crop"):
            sha, fa = self._padded(item, sha)
        labels = list(item.labels) + assign_face_ids(fa, item.face_labels) + \
            drop_hidden(model_labels(fa), fa, item.meta.get("occluded", []))
        facts = Facts(labels)
        split = item.split or assign_split(item.group, cfg.seed, cfg.held_out)
        ref = _image_ref(item.image_path, sha, self.out, fa)
        small = compact(fa)
        known_names = set(OFFLINE_GALLERY.values()) if "agent" in cfg.styles else set()
        records: list[Record] = []
        for style in cfg.styles:
            rng = random.Random(stable_hash(cfg.seed, item.key, style))
            if style == "agent":
                # identity traces cost a descriptor each: on real datasets only one image in GALLERY_EVERY
                use_gallery = item.source == "offline" or stable_hash(cfg.seed, "gallery", item.key) % GALLERY_EVERY == 0
                use_partner = item.source == "offline" or stable_hash(cfg.seed, "partner", item.key) % PARTNER_EVERY == 0
                drafts = [(d.category, d.turns, d.labels,
                           {"evidence": d.evidence,
                            **({"images": [_shown_path(p, self.out) for p in d.images]} if len(d.images) > 1 else {})},
                           d.question, d.answer)
                          for d in agent_drafts(item.image_path, fa, rng, gallery=self.gallery if use_gallery else None,
                                                per_image=max(1, cfg.per_image - 1),
                                                partner=self._partner(item, split) if use_partner else None)]
                drafts = without_unmeasured_hair(drafts, item.meta.get("analysis_steps") or ANALYSIS_STEPS)
                generator = GENERATOR
            else:
                qa = generate_style(style, facts, rng, TemplateTeacher(rng), per_image=cfg.per_image)
                answers = [d.answer for d in qa]
                generator = GENERATOR
                if self.teacher is not None and qa:
                    rewrites = self.teacher.rewrite_many([(d.question, d.answer, _facts_text(labels)) for d in qa])
                    for k, (d, new) in enumerate(zip(qa, rewrites)):
                        if new is not None and check(new, labels, known_names=known_names, question=d.question).ok:
                            answers[k] = new
                        else:
                            self.stats.teacher_fallbacks += 1
                    generator = self.teacher.name
                drafts = [(d.category, [turn("human", f"<image>\n{d.question}"), turn("gpt", a)], [],
                           {"face_id": d.face_id} if d.face_id else {}, d.question, a) for d, a in zip(qa, answers)]
            for k, (category, turns, extra_labels, meta, question, answer) in enumerate(drafts):
                rid = f"{item.source}-{style}-{stable_hash(item.key, style, k):016x}"
                if rid in writer.ids:
                    self.stats.already_written += 1
                    continue
                all_labels = labels + extra_labels
                verdict = check(answer, all_labels, known_names=known_names, question=question)
                if not verdict.ok:
                    self.stats.rejected += 1
                    with open(self.out / "rejected.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps({"id": rid, "answer": answer, "problems": verdict.problems}) + "\n")
                    continue
                if writer.dedup.is_dup(sha, style, question):
                    self.stats.duplicates += 1
                    continue
                rec = Record(id=rid, image=ref, faces=small, labels=all_labels, conversations=turns, style=style,
                             category=category, tools=_tools_offered(style), generator=generator, split=split,
                             source=item.source, group=item.group, meta={"unit": item.key, **item.meta, **meta})
                writer.dedup.add(sha, style, question)
                records.append(rec)
        return records

    def run(self) -> RunStats:
        """Generate every unit not yet done. Safe to interrupt (Ctrl-C, SIGKILL) at any point: rerun to resume."""
        import time

        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        cfg_file = self.out / "config.json"
        ident = self.cfg.identity()
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            if old != ident:
                diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
                raise ValueError(f"{self.out} holds a run with other settings ({', '.join(diff)} differ); "
                                 "resume with the same settings or use a new --out folder")
        else:
            atomic_write(cfg_file, json.dumps(ident, indent=2).encode())
        writer = ShardWriter(self.out, self.cfg.shard_size)
        misses0, ms0 = self.cache.misses, self.cache.tool_ms
        t0 = time.perf_counter()
        items = self.items()  # the offline source analyses its originals here (to place augmentations)
        todo = [it for it in items if it.key not in writer.done_units]
        self.stats.skipped_units = len(items) - len(todo)
        if self.cfg.workers > 1 and todo:
            t_warm = time.perf_counter()
            misses = warm_cache(todo, self.cache.folder, self.cfg.workers)
            if misses:  # wall time of the parallel tool runs, shared out over the images they analysed
                self.stats.analysed += misses
                self.stats.tool_ms += (time.perf_counter() - t_warm) * 1000
        bar = tqdm(todo, desc="data generate", unit="image", disable=not self.cfg.progress,
                   initial=0, postfix={"done before": self.stats.skipped_units})
        try:
            for item in bar:
                try:
                    records = self.unit_records(item, writer)
                except (OSError, ValueError) as e:  # one unreadable image must not stop a long run
                    self.stats.failed_units += 1
                    with open(self.out / "failed.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps({"unit": item.key, "image": item.image_path, "error": str(e)[:300]}) + "\n")
                    continue
                n = writer.write_unit(item.key, records)
                self.stats.units += 1
                self.stats.written += n
                for r in records:
                    self.stats.by_style[r.style] = self.stats.by_style.get(r.style, 0) + 1
                bar.set_postfix(records=len(writer.ids), rejected=self.stats.rejected)
        finally:
            bar.close()
            self.stats.seconds = time.perf_counter() - t0
            self.stats.analysed += self.cache.misses - misses0
            self.stats.tool_ms += self.cache.tool_ms - ms0
        atomic_write(self.out / "DONE", json.dumps(self.stats.__dict__, indent=2).encode())
        if self.cfg.export_hf:
            export_hf(self.out)
        return self.stats


def _tools_offered(style: str) -> list[str]:
    if style != "agent":
        return []
    from facellm.tools.registry import TOOL_NAMES

    return list(TOOL_NAMES)


def _worker_init() -> None:
    # one thread per model in each worker: the workers themselves are the parallelism
    for var in ("FACELLM_TFLITE_THREADS", "FACELLM_ORT_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


def _warm_chunk(paths: list[str], folder: str) -> int:
    cache = AnalysisCache(folder)
    for p in paths:
        try:
            cache.get(p)
        except (OSError, ValueError):
            pass  # reported when the main loop reaches it
    return cache.misses


def warm_cache(items: list[SourceItem], folder: Path, workers: int) -> int:
    """Run the face tools (the expensive step) over the items in ``workers`` processes, filling the cache.

    The processes are spawned, not forked: a fork of a process whose TFLite / ONNX Runtime thread pools are
    running (the offline source has analysed its originals by then) inherits pools without their threads
    and crawls or hangs. Returns how many images were analysed (not already cached)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    paths = sorted({it.image_path for it in items})
    if not paths:
        return 0
    chunks = [paths[i::workers * 4] for i in range(min(len(paths), workers * 4))]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        return int(sum(pool.map(_warm_chunk, chunks, [str(folder)] * len(chunks))))


def generate(cfg: GenerateConfig) -> RunStats:
    return Generator(cfg).run()


# ------------------------------------------------------------------ HF dataset export


def _hf_row(r: Record) -> dict:
    return {"id": r.id, "image_path": r.image.path, "image_sha256": r.image.sha256,
            "conversations": [{"from": t.from_, "value": t.value} for t in r.conversations],
            "style": r.style, "category": r.category, "split": r.split, "source": r.source, "group": r.group,
            "generator": r.generator, "tools": r.tools,
            "labels": json.dumps([lb.model_dump() for lb in r.labels], ensure_ascii=False),
            "faces": r.faces.to_json() if r.faces is not None else "",
            "meta": json.dumps(r.meta, ensure_ascii=False)}


def _hf_rows(out: str, split: str, stamp: str):
    from .loader import load_records

    for r in load_records(out, split=split):
        yield _hf_row(r)


def export_hf(out: str | Path) -> Path:
    """``out/hf`` (``DatasetDict.save_to_disk``) and ``out/parquet/<split>.parquet``, streamed from the shards
    (``Dataset.from_generator``: nothing holds all records in memory). Labels, faces and meta are JSON strings
    there, so every column has one Arrow type; ``load_dataset("json", data_files=out/shards/*.jsonl)`` reads
    the shards themselves with typed columns."""
    import shutil

    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    from .loader import shard_files

    disable_progress_bar()  # the generate command has its own bar; datasets' per-step bars are noise here
    out = Path(out)
    files = shard_files(out)
    # the generator's cache is keyed by its arguments: the stamp changes whenever a shard does
    stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    splits = sorted({json.loads(line)["split"] for p in files for line in open(p, encoding="utf-8")
                     if line.endswith("\n")})
    dd = DatasetDict({s: Dataset.from_generator(_hf_rows, gen_kwargs={"out": str(out), "split": s, "stamp": stamp},
                                                cache_dir=str(out / "cache" / "hf"))
                      for s in splits})
    target, tmp = out / "hf", out / "hf.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    dd.save_to_disk(str(tmp))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    (out / "parquet").mkdir(exist_ok=True)
    for s, ds in dd.items():
        ds.to_parquet(str(out / "parquet" / f".{s}.parquet.tmp"))
        os.replace(out / "parquet" / f".{s}.parquet.tmp", out / "parquet" / f"{s}.parquet")
    return target
