"""The real benchmark: held-out photos of the real face datasets (UTKFace, FER2013, CelebA in ``../shared/data``)
turned into short-answer questions, written once to a folder and loaded from it.

Held out means data_gen's own split rule decides (``facellm.data_gen.adapters.facedata_items`` ->
``data_gen.splits.split_for``): only ``test`` photos are used, so the benchmark is photo-disjoint from training
and identity-disjoint for CelebA, whatever part of the data a training run generated records from. The build
also checks that no held-out split unit appears in the dataset's train/validation part, and, given a data_gen
output folder (``train_records``), that none appears in its training records.

The folder holds ``items.jsonl`` (the questions with references, groups and evidence), ``manifest.json`` (what
was built from what, item counts per category, timings) and ``images/`` (composed canvases and pairs, padded
copies of tight crops the detector missed). Face analyses are cached by image hash (``analysis_cache``; pass data
generation's cache folder to reuse its analyses), so an interrupted build resumes at the cost of the item
lists only. The dataset files themselves are read in place, never copied.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .categories import BuildContext, load_categories
from .items import Benchmark, BenchmarkError, EvalItem

BENCH_VERSION = 1
ITEMS_FILE = "items.jsonl"
MANIFEST_FILE = "manifest.json"
PAD_SHARE = 0.5  # as data generation pads a tight crop the detector missed (data_gen/pipeline.py)


@dataclass
class RealBuildConfig:
    data: Path  # the folder holding utkface/crop_part1, fer2013, celeba
    out: Path
    seed: int = 0  # data_gen's split seed: must be the seed the training data was generated with
    caps: dict[str, int] = field(default_factory=dict)  # category -> items (default: each category's own)
    categories: list[str] | None = None  # None: every registered category
    analysis_cache: Path | None = None  # default: out/cache/analysis
    train_records: Path | None = None  # a data_gen output folder to check for leaks
    progress: bool = True

    def identity(self) -> dict:
        return {"version": BENCH_VERSION, "data": str(Path(self.data).resolve()), "seed": self.seed,
                "caps": dict(sorted(self.caps.items())), "categories": self.categories}


def is_real_benchmark(folder: str | Path) -> bool:
    return (Path(folder) / ITEMS_FILE).is_file() and (Path(folder) / MANIFEST_FILE).is_file()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def held_out(data: Path, seed: int) -> tuple[dict[str, list], dict]:
    """The held-out (``test``) source items by dataset, and what was read / left out."""
    from facellm.data_gen.adapters import DatasetWarning, facedata_items

    skipped: list[dict] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetWarning)
        items = list(facedata_items(data, skipped=skipped, seed=seed))
    notes = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    trained_on = {it.group for it in items if it.split != "test"}
    test = [it for it in items if it.split == "test"]
    leaks = sorted({it.group for it in test} & trained_on)
    if leaks:
        raise BenchmarkError(f"{len(leaks)} held-out split unit(s) also appear outside the test split (e.g. "
                             f"{leaks[0]!r}): the benchmark would not be held out")
    by_source: dict[str, list] = {}
    for it in sorted(test, key=lambda it: it.key):
        by_source.setdefault(it.source, []).append(it)
    stats = {"read": len(items), "held_out": {k: len(v) for k, v in by_source.items()},
             "skipped_inputs": len(skipped), "dataset_warnings": notes}
    return by_source, stats


def _trained_groups(folder: Path) -> set[str]:
    from facellm.data_gen.pipeline import read_records

    out: set[str] = set()
    for r in read_records(folder):
        if r.split == "train":
            out.update(r.group.split("+"))  # composed records join their members' units with "+"
    return out


def _item_groups(it: EvalItem, keys: dict[str, str]) -> set[str]:
    out = {it.meta["group"]} if it.meta.get("group") else set()
    out.update(keys[k] for k in it.meta.get("members", []) if k in keys)
    return out


class _Preparer:
    """Image to show + its analysis for a source item (a padded copy when the detector misses a tight crop)."""

    def __init__(self, out: Path, cache, bar=None) -> None:
        self.out, self.cache, self.bar = out, cache, bar

    def analyse(self, path: str):
        fa = self.cache.get(path)
        if self.bar is not None:
            self.bar.update(1)
        return fa

    def __call__(self, item) -> tuple[str, object]:
        fa = self.analyse(item.image_path)
        if fa.faces or "tight_crop" not in item.meta:
            return item.image_path, fa
        from PIL import Image, ImageOps

        from facellm.data_gen.evidence import file_sha256

        target = self.out / "images" / "padded" / f"{file_sha256(item.image_path)[:24]}.png"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            im = ImageOps.exif_transpose(Image.open(item.image_path)).convert("RGB")
            mean = tuple(int(v) for v in im.resize((1, 1), Image.BILINEAR).getpixel((0, 0)))
            buf = io.BytesIO()
            ImageOps.expand(im, border=round(PAD_SHARE * max(im.size)), fill=mean).save(buf, format="PNG")
            _atomic_write(target, buf.getvalue())
        return str(target), self.analyse(str(target))


def build_real_benchmark(cfg: RealBuildConfig) -> Benchmark:
    """Build (or rebuild) the benchmark folder ``cfg.out`` from the held-out part of ``cfg.data``."""
    from tqdm import tqdm

    from facellm.data_gen.evidence import AnalysisCache

    t0 = time.perf_counter()
    data, out = Path(cfg.data), Path(cfg.out)
    if not data.is_dir():
        raise BenchmarkError(f"{data} is not a folder (expected the real datasets: utkface/crop_part1, fer2013, "
                             "celeba)")
    cats = load_categories()
    chosen = cfg.categories or list(cats)
    unknown = [c for c in chosen if c not in cats]
    if unknown:
        raise BenchmarkError(f"unknown benchmark categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                             f"known: {', '.join(cats)}")
    bad_caps = [c for c in cfg.caps if c not in cats]
    if bad_caps:
        raise BenchmarkError(f"--caps names unknown categories {', '.join(bad_caps)}; known: {', '.join(cats)}")
    out.mkdir(parents=True, exist_ok=True)
    by_source, stats = held_out(data, cfg.seed)
    cache = AnalysisCache(cfg.analysis_cache or out / "cache" / "analysis")
    bar = tqdm(desc="analysing held-out images", unit="img", disable=not cfg.progress)
    prep = _Preparer(out, cache, bar)
    caps = {name: cfg.caps.get(name, c.default_cap) for name, c in cats.items()}
    ctx = BuildContext(out=out, held_out=by_source, seed=cfg.seed, caps=caps, prepare=prep, analyse=prep.analyse,
                       memo={"analysis_cache": cache})
    items: list[EvalItem] = []
    per_category: dict[str, dict] = {}
    try:
        for name in chosen:
            t = time.perf_counter()
            got = cats[name].build(ctx)
            items += got
            per_category[name] = {"items": len(got), "seconds": round(time.perf_counter() - t, 1),
                                  "about": cats[name].about}
            bar.set_postfix_str(f"{name}: {len(got)} items")
    finally:
        bar.close()
    if cfg.train_records is not None:
        keys = {it.key: it.group for its in by_source.values() for it in its}
        trained = _trained_groups(Path(cfg.train_records))
        leaked = sorted({g for it in items for g in _item_groups(it, keys)} & trained)
        if leaked:
            raise BenchmarkError(f"{len(leaked)} benchmark photo/identity unit(s) appear in the training records of "
                                 f"{cfg.train_records} (e.g. {leaked[0]!r}): were they generated with another "
                                 "--seed or held-out share?")
        stats["checked_against"] = str(cfg.train_records)
    bench = Benchmark(name=f"real:{out.name}", items=items, source=str(data))  # checks that ids are unique
    manifest = {**cfg.identity(), "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "items": len(items),
                "categories": per_category, **stats,
                "analysis_cache": {"folder": str(cache.folder), "hits": cache.hits, "misses": cache.misses},
                "seconds": round(time.perf_counter() - t0, 1)}
    lines = "".join(it.model_dump_json() + "\n" for it in items)
    _atomic_write(out / ITEMS_FILE, lines.encode("utf-8"))
    _atomic_write(out / MANIFEST_FILE, json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))
    return bench.model_copy(update={"notes": manifest_notes(manifest), "counts": _counts(manifest)})


def _counts(manifest: dict) -> dict[str, int]:
    return {"items": manifest["items"], **{f"items_{k}": v["items"] for k, v in manifest["categories"].items()}}


def manifest_notes(manifest: dict) -> list[str]:
    held = ", ".join(f"{k} {v}" for k, v in manifest.get("held_out", {}).items())
    return [f"Real benchmark built {manifest.get('built')} from {manifest.get('data')} with data_gen's split rule "
            f"(seed {manifest.get('seed')}): held-out photos only ({held}); photo-disjoint from training, "
            "identity-disjoint for CelebA.",
            "Groups: UTKFace's annotated perceived gender, age group and the dataset's race label (used for grouping "
            "the report only; nothing estimates race), and their intersection; groups under 10 items are left out "
            "of the largest-gap figure.",
            "FER2013 is in-domain for the expression tool (it was trained on FER2013): read its expression score "
            "as in-domain, not as generalisation."]


def load_real_benchmark(folder: str | Path, *, check_images: bool = True) -> Benchmark:
    folder = Path(folder)
    if not is_real_benchmark(folder):
        raise BenchmarkError(f"{folder} is not a built real benchmark (no {ITEMS_FILE} + {MANIFEST_FILE}): build it "
                             "with `facellm eval --benchmark real --data ../shared/data --build-only`")
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    if manifest.get("version") != BENCH_VERSION:
        raise BenchmarkError(f"{folder} was built by another version of the benchmark ({manifest.get('version')}, "
                             f"this is {BENCH_VERSION}): rebuild it with --rebuild")
    items = []
    with open(folder / ITEMS_FILE, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                items.append(EvalItem.model_validate_json(line))
            except ValueError as e:
                raise BenchmarkError(f"{folder / ITEMS_FILE} line {n}: not a benchmark item ({e})") from None
    bench = Benchmark(name=f"real:{folder.name}", items=items, source=manifest.get("data", ""),
                      notes=manifest_notes(manifest), counts=_counts(manifest))
    if check_images:
        bench.check_images()
    return bench


def ensure_real_benchmark(cfg: RealBuildConfig, *, rebuild: bool = False) -> Benchmark:
    """The benchmark in ``cfg.out``: loaded when it was built from the same data, seed and caps, else built."""
    out = Path(cfg.out)
    if not rebuild and is_real_benchmark(out):
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
        if all(manifest.get(k) == v for k, v in cfg.identity().items()):
            return load_real_benchmark(out)
    return build_real_benchmark(cfg)
