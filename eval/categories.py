"""The real benchmark's categories, by name: each builds its items from the held-out photos.

A category is a function ``(ctx: BuildContext) -> list[EvalItem]`` registered with ``@category(name, cap)``.
The real benchmark (realbench.py) runs every registered category. The built-in ones live in real_categories.py;
a new category lives in a module of its own named ``eval/bench_*.py`` (e.g. an agent held-out question set):
every such module is imported by ``load_categories()``, so adding one needs no edit anywhere else.

``BuildContext`` gives a category the held-out source items by dataset (already split with data_gen's split
rule: photo-disjoint, identity-disjoint for CelebA), a seeded random generator per purpose, the benchmark
folder for images it composes, and ``prepare(item)`` -> (image path to show, its FaceAnalysis), which analyses
once (cached by image hash) and pads a tight crop the detector missed, as data generation does.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .items import EvalItem


@dataclass
class BuildContext:
    out: Path  # the benchmark folder (composed images go under out/images)
    held_out: dict[str, list[Any]]  # dataset name -> held-out data_gen SourceItems, in a stable order
    seed: int = 0
    caps: dict[str, int] = field(default_factory=dict)  # category -> at most this many items
    prepare: Callable[[Any], tuple[str, Any]] | None = None  # SourceItem -> (image path, FaceAnalysis)
    analyse: Callable[[str], Any] | None = None  # image path -> FaceAnalysis (cached by content)
    memo: dict[str, Any] = field(default_factory=dict)  # what categories share (a sample, the analysis cache)

    def rng(self, *purpose: object) -> random.Random:
        return random.Random("\x1f".join(map(str, (self.seed, *purpose))))

    def cap(self, name: str) -> int:
        return self.caps[name]


CategoryBuilder = Callable[[BuildContext], list[EvalItem]]


@dataclass
class Category:
    name: str
    build: CategoryBuilder
    default_cap: int
    about: str


CATEGORIES: dict[str, Category] = {}


def category(name: str, default_cap: int, about: str = "") -> Callable[[CategoryBuilder], CategoryBuilder]:
    """Register a category builder under ``name`` with its default item cap."""
    def register(fn: CategoryBuilder) -> CategoryBuilder:
        if name in CATEGORIES and CATEGORIES[name].build is not fn:
            raise ValueError(f"two benchmark categories are named {name!r}")
        CATEGORIES[name] = Category(name, fn, default_cap, about or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return register


def load_categories() -> dict[str, Category]:
    """Every category: the built-in ones and those of ``eval/bench_*.py`` modules."""
    from . import real_categories  # noqa: F401  (registers the built-in categories)

    package = __name__.rsplit(".", 1)[0]
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name.startswith("bench_"):
            importlib.import_module(f"{package}.{mod.name}")
    return CATEGORIES
