"""Images composed from real faces, with labels known by construction.

* Multi-face canvases: 2-5 single-face photos (UTKFace or FER2013 crops) of one split side by side on a plain
  canvas, each face's human labels anchored at its tile's centre. They teach counting and left/right/ordinal
  questions ("the second face from the left", "the person on the right") on real faces.
* Verification pairs: two CelebA photos' main faces side by side, same identity or not (balanced), from one
  split, so a pair never mixes identities of different splits (splits stay identity-disjoint).

Items are listed up front (cheap); the image is rendered when the pipeline reaches the unit (``SourceItem.build``),
written once under ``OUT/images/composites`` (a resumed run reuses it).
"""

from __future__ import annotations

import io
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageOps

from .evidence import AnalysisCache, atomic_write
from .schema import Label, human, transform_label
from .sources import SourceItem, stable_hash

TILE_GAP = 36  # px between tiles: the detector must see separate faces
ORDINAL_WORDS = ["first", "second", "third", "fourth", "fifth"]


def _save_jpeg(img: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    atomic_write(path, buf.getvalue())


def _tile_labels(item: SourceItem) -> list[Label]:
    return [lb for _, lb in item.face_labels]


def render_canvas(members: list[SourceItem], rng: random.Random, path: Path) -> list[dict]:
    """Tight face crops side by side (left to right in ``members`` order); returns each tile's box."""
    tiles, sizes = [], []
    for m in members:
        im = ImageOps.exif_transpose(Image.open(m.image_path)).convert("RGB")
        side = rng.randint(112, 176)
        im = im.resize((side, round(side * im.height / im.width)), Image.BICUBIC)
        tiles.append(im)
        sizes.append(im.size)
    pad = TILE_GAP
    height = max(h for _, h in sizes) + 2 * pad + 24
    width = sum(w for w, _ in sizes) + pad * (len(sizes) + 1)
    bg = tuple(rng.randint(150, 235) for _ in range(3))
    canvas = Image.new("RGB", (width, height), bg)
    x, boxes = pad, []
    for im in tiles:
        y = rng.randint(pad // 2, height - im.height - pad // 2)
        canvas.paste(im, (x, y))
        boxes.append({"box": [x, y, x + im.width, y + im.height]})
        x += im.width + pad
    _save_jpeg(canvas, path)
    return boxes


def _main_face_crop(item: SourceItem, cache: AnalysisCache) -> Image.Image:
    """The CelebA photo's main face (the adapter's rule), with some context; the whole photo if none is found."""
    im = ImageOps.exif_transpose(Image.open(item.image_path)).convert("RGB")
    fa = cache.get(item.image_path)
    if not fa.faces:
        return im
    cx, cy = im.width / 2, im.height / 2
    f = max(fa.faces, key=lambda f: (round(f.box.area), -((f.box.center[0] - cx) ** 2 + (f.box.center[1] - cy) ** 2)))
    b = f.box.scaled(1.8).clipped(im.width, im.height)
    return im.crop((int(b.x1), int(b.y1), int(b.x2), int(b.y2)))


def render_pair(a: SourceItem, b: SourceItem, cache: AnalysisCache, path: Path) -> None:
    height = 224
    tiles = []
    for m in (a, b):
        im = _main_face_crop(m, cache)
        tiles.append(im.resize((max(1, round(im.width * height / im.height)), height), Image.BICUBIC))
    canvas = Image.new("RGB", (tiles[0].width + tiles[1].width + 3 * TILE_GAP, height + 2 * TILE_GAP), (230, 230, 230))
    canvas.paste(tiles[0], (TILE_GAP, TILE_GAP))
    canvas.paste(tiles[1], (2 * TILE_GAP + tiles[0].width, TILE_GAP))
    _save_jpeg(canvas, path)


def _by_split(items: list[SourceItem]) -> dict[str, list[SourceItem]]:
    out: dict[str, list[SourceItem]] = defaultdict(list)
    for it in sorted(items, key=lambda it: it.key):
        out[it.split or "train"].append(it)
    return out


def multi_face_items(items: list[SourceItem], out_dir: Path, *, seed: int = 0, per_faces: int = 12) -> list[SourceItem]:
    """About one canvas per ``per_faces`` single-face photos, from each source and split separately."""
    out: list[SourceItem] = []
    for source in sorted({it.source for it in items}):
        for split, pool in _by_split([it for it in items if it.source == source]).items():
            if len(pool) < 2:
                continue
            for c in range(max(1, len(pool) // per_faces)):
                rng = random.Random(stable_hash(seed, "canvas", source, split, c))
                k = min(len(pool), rng.choice([2, 2, 3, 3, 4, 5]))
                members = rng.sample(pool, k)
                key = f"composite/{source}/{split}/{c}"
                path = out_dir / "images" / "composites" / f"{source}_{split}_{c}.jpg"
                out.append(_canvas_item(key, path, members, split, seed))
    return out


def _canvas_item(key: str, path: Path, members: list[SourceItem], split: str, seed: int) -> SourceItem:
    item = SourceItem(key=key, image_path=str(path), source="composite", group="+".join(m.group for m in members),
                      split=split, labels=[transform_label("num_faces", len(members)),
                                           transform_label("composite_of", len(members))],
                      meta={"members": [m.key for m in members], "composed_from": members[0].source})

    def build() -> None:
        rng = random.Random(stable_hash(seed, "render", key))
        tiles = render_canvas(members, rng, path)
        item.face_labels = []
        for m, t in zip(members, tiles):
            x1, y1, x2, y2 = t["box"]
            t["labels"] = {lb.name: lb.value for lb in _tile_labels(m) if lb.name != "race"}
            item.face_labels += [(((x1 + x2) / 2, (y1 + y2) / 2), lb) for lb in _tile_labels(m) if lb.name != "race"]
        item.meta["tiles"] = tiles

    item.build = build
    return item


def pair_items(items: list[SourceItem], out_dir: Path, cache: AnalysisCache, *, seed: int = 0) -> list[SourceItem]:
    """Same/different-person pairs from identity-labelled photos, balanced, within a split."""
    out: list[SourceItem] = []
    for split, pool in _by_split([it for it in items if it.meta.get("identity") is not None]).items():
        by_id: dict[str, list[SourceItem]] = defaultdict(list)
        for it in pool:
            by_id[it.meta["identity"]].append(it)
        ids = sorted(i for i in by_id if len(by_id[i]) >= 2)
        if len(by_id) < 2 or not ids:
            continue
        for c in range(len(pool)):
            rng = random.Random(stable_hash(seed, "pair", split, c))
            same = c % 2 == 0
            if same:
                a, b = rng.sample(by_id[rng.choice(ids)], 2)
            else:
                i, j = rng.sample(sorted(by_id), 2)
                a, b = rng.choice(by_id[i]), rng.choice(by_id[j])
            key = f"pair/{a.source}/{split}/{c}"
            path = out_dir / "images" / "composites" / f"pair_{a.source}_{split}_{c}.jpg"
            item = SourceItem(key=key, image_path=str(path), source="pair", group=f"{a.group}+{b.group}", split=split,
                              labels=[human("same_person", same), transform_label("num_faces", 2),
                                      transform_label("composite_of", 2)],
                              meta={"members": [a.key, b.key], "identity_rule": a.meta.get("label_face"),
                                    "composed_from": a.source})
            item.build = (lambda a=a, b=b, path=path: render_pair(a, b, cache, path))
            out.append(item)
    return out
