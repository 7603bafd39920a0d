"""Where images and their human labels come from: ``SourceItem`` and the offline source.

The offline source needs no download: the real photos that ship inside packages (facellm.tools.photos) and
augmented variants of them (crops, flips, small rotations, lighting, grayscale, blur, JPEG, occlusion
patches, placement on a larger canvas, several photos side by side). Its labels:

* ``human``: by-eye notes on the original photos (data_gen/offline_notes.json: face count, smiling, eyes
  open, glasses, hat, apparent age range and gender, hair), carried into a variant only where the transform
  keeps them true (a face cropped away loses its labels, an occluded mouth loses "smiling").
* ``transform``: what the augmentation did (JPEG quality, blur radius, rotation, flip, occlusion, canvas,
  composite) -- ground truth by construction, for the image-quality and forensics questions.
* model estimates: everything the tools measure on the variant itself (added later by the pipeline).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from .evidence import AnalysisCache, atomic_write, file_sha256
from .schema import Label, human, transform_label

NOTES_FILE = Path(__file__).with_name("offline_notes.json")
FACE_PHOTOS = ("astronaut", "grace_hopper", "camera", "group", "tom_hanks")
NO_FACE_PHOTOS = ("mask_white", "mask_black", "mask_blue", "mask_green")
Point = tuple[float, float]


@dataclass
class SourceItem:
    key: str  # unique and stable across runs: record ids derive from it
    image_path: str
    source: str
    group: str  # the split unit (original photo, or identity)
    split: str | None = None  # forced split (the dataset's own, or the offline source's), else assigned
    labels: list[Label] = field(default_factory=list)  # image-level labels
    face_labels: list[tuple[Point | None, Label]] = field(default_factory=list)  # per face, anchored at a point
    meta: dict = field(default_factory=dict)
    # renders a composed image (and sets its anchored labels) when the pipeline reaches the unit
    build: Callable[[], None] | None = field(default=None, repr=False)


def stable_hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


# ------------------------------------------------------------------ by-eye notes -> human labels


def _age_range(text: str) -> list[float] | None:
    if m := re.search(r"(\d+)\s*-\s*(\d+)", text):
        return [float(m.group(1)), float(m.group(2))]
    if m := re.search(r"(\d+)\+", text):
        return [float(m.group(1)), 100.0]
    if "young adult" in text:
        return [18.0, 30.0]
    return None


def person_labels(visible: dict) -> list[Label]:
    """Human labels from one person's by-eye notes (only what the notes state plainly)."""
    out = []
    s = visible.get("smiling")
    if s is True or s is False:
        out.append(human("smile", s))
    elif isinstance(s, str) and "laugh" in s:
        out.append(human("smile", True))
    if visible.get("eyes_open") is True:
        out.append(human("eyes_closed", False))
    if isinstance(visible.get("glasses"), bool):
        out.append(human("eyeglasses", visible["glasses"]))
    if isinstance(visible.get("hat"), str):
        out.append(human("wearing_hat", True))
        out.append(human("headwear", visible["hat"]))
    if visible.get("head") == "frontal":
        out.append(human("head_pose", "frontal"))
    if isinstance(visible.get("apparent_age"), str) and (r := _age_range(visible["apparent_age"])):
        out.append(human("apparent_age_range", r))
    if visible.get("presentation") in ("woman", "man"):
        out.append(human("apparent_gender", visible["presentation"]))
    if isinstance(visible.get("hair"), str):
        out.append(human("hair", visible["hair"]))
    return out


def load_notes() -> dict:
    return json.loads(NOTES_FILE.read_text())


# ------------------------------------------------------------------ augmentations with tracked geometry


@dataclass
class Variant:
    img: Image.Image
    affine: np.ndarray  # 2x3: original pixel -> variant pixel
    labels: list[Label]
    ops: list[str]
    occluded: list[tuple[float, float, float, float]] = field(default_factory=list)  # boxes, variant pixels
    occluded_regions: list[str] = field(default_factory=list)  # "eyes" / "mouth", one per box
    lost_faces: bool = False  # some face may be cut off: the face count is no longer known


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine ``a`` then ``b``."""
    A = np.vstack([a, [0, 0, 1]])
    B = np.vstack([b, [0, 0, 1]])
    return (B @ A)[:2]


def _apply(m: np.ndarray, p: Point) -> Point:
    return (float(m[0, 0] * p[0] + m[0, 1] * p[1] + m[0, 2]), float(m[1, 0] * p[0] + m[1, 1] * p[1] + m[1, 2]))


def _boxes(v: Variant, boxes: list[tuple[float, float, float, float]]) -> list[tuple[float, float, float, float]]:
    out = []
    for x1, y1, x2, y2 in boxes:
        pts = [_apply(v.affine, p) for p in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        out.append((min(xs), min(ys), max(xs), max(ys)))
    return out


def op_crop(v: Variant, rng: random.Random, boxes) -> None:
    w, h = v.img.size
    bx = _boxes(v, boxes)
    if bx and rng.random() < 0.6:  # keep every face
        x1, y1 = min(b[0] for b in bx), min(b[1] for b in bx)
        x2, y2 = max(b[2] for b in bx), max(b[3] for b in bx)
        m = rng.uniform(0.3, 1.2)
        fw, fh = x2 - x1, y2 - y1
        c = (max(0, x1 - m * fw), max(0, y1 - m * fh), min(w, x2 + m * fw), min(h, y2 + m * fh))
        kind = "crop keeping every face"
    else:  # a random window (around one face if there is one): faces may be cut off
        if bx:
            b = rng.choice(bx)
            s = rng.uniform(1.6, 3.0)
            cx, cy, half = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, s * max(b[2] - b[0], b[3] - b[1]) / 2
            c = (max(0, cx - half), max(0, cy - half), min(w, cx + half), min(h, cy + half))
        else:
            f = rng.uniform(0.5, 0.85)
            x0, y0 = rng.uniform(0, w * (1 - f)), rng.uniform(0, h * (1 - f))
            c = (x0, y0, x0 + w * f, y0 + h * f)
        v.lost_faces = True
        kind = "crop"
    c = tuple(int(round(t)) for t in c)
    if c[2] - c[0] < 48 or c[3] - c[1] < 48:
        return
    v.img = v.img.crop(c)
    v.affine = _compose(v.affine, np.array([[1.0, 0, -c[0]], [0, 1.0, -c[1]]]))
    v.ops.append(kind)
    v.labels.append(transform_label("cropped", True))


def op_flip(v: Variant, rng: random.Random, boxes) -> None:
    w = v.img.size[0]
    v.img = ImageOps.mirror(v.img)
    v.affine = _compose(v.affine, np.array([[-1.0, 0, w - 1], [0, 1.0, 0]]))
    v.ops.append("horizontal flip")
    v.labels.append(transform_label("mirrored", True))


def op_rotate(v: Variant, rng: random.Random, boxes) -> None:
    deg = rng.choice([-1, 1]) * rng.uniform(4, 12)
    w, h = v.img.size
    v.img = v.img.rotate(deg, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    # PIL rotates counter-clockwise about the centre; as a map from old to new pixels:
    t = math.radians(deg)
    cx, cy = w / 2, h / 2
    cos, sin = math.cos(t), math.sin(t)
    m = np.array([[cos, sin, cx - cos * cx - sin * cy], [-sin, cos, cy + sin * cx - cos * cy]])
    v.affine = _compose(v.affine, m)
    v.ops.append(f"rotation {deg:+.0f} degrees")
    v.labels.append(transform_label("rotation_deg", round(deg, 1)))


def op_lighting(v: Variant, rng: random.Random, boxes) -> None:
    gamma = rng.choice([rng.uniform(0.45, 0.7), rng.uniform(1.6, 2.4)])
    arr = np.asarray(v.img, dtype=np.float32) / 255.0
    v.img = Image.fromarray((255.0 * arr ** gamma).round().clip(0, 255).astype(np.uint8))
    kind = "brightened" if gamma < 1 else "darkened"
    v.ops.append(f"{kind} (gamma {gamma:.2f})")
    v.labels.append(transform_label("lighting_change", kind))


def op_grayscale(v: Variant, rng: random.Random, boxes) -> None:
    v.img = ImageOps.grayscale(v.img).convert("RGB")
    v.ops.append("grayscale")
    v.labels.append(transform_label("grayscale", True))


def op_blur(v: Variant, rng: random.Random, boxes) -> None:
    r = rng.uniform(1.5, 4.0)
    v.img = v.img.filter(ImageFilter.GaussianBlur(r))
    v.ops.append(f"gaussian blur {r:.1f} px")
    v.labels.append(transform_label("blur_radius_px", round(r, 1)))


def op_jpeg(v: Variant, rng: random.Random, boxes) -> None:
    q = rng.randint(6, 25)
    buf = io.BytesIO()
    v.img.save(buf, format="JPEG", quality=q)
    v.img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    v.ops.append(f"JPEG quality {q}")
    v.labels.append(transform_label("jpeg_quality", q))


def op_occlude(v: Variant, rng: random.Random, boxes) -> None:
    bx = [b for b in _boxes(v, boxes) if b[0] >= 0 and b[1] >= 0 and b[2] <= v.img.size[0] and b[3] <= v.img.size[1]]
    if not bx:
        return
    x1, y1, x2, y2 = rng.choice(bx)
    fh = y2 - y1
    region = rng.choice(["eyes", "mouth"])
    top, bottom = (y1 + 0.2 * fh, y1 + 0.5 * fh) if region == "eyes" else (y1 + 0.62 * fh, y1 + 0.95 * fh)
    patch = (x1 - 0.05 * (x2 - x1), top, x2 + 0.05 * (x2 - x1), bottom)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    img = v.img.copy()
    ImageDraw.Draw(img).rectangle(patch, fill=colour)
    v.img = img
    v.occluded.append(patch)
    v.occluded_regions.append(region)
    v.ops.append(f"occlusion patch over the {region}")
    v.labels.append(transform_label("occluded_region", region, face_id=None))


def op_canvas(v: Variant, rng: random.Random, boxes) -> None:
    w, h = v.img.size
    s = rng.uniform(1.4, 2.2)
    cw, ch = int(w * s), int(h * s)
    if cw * ch > 4_000_000:
        return
    bg = Image.new("RGB", (cw, ch), tuple(rng.randint(0, 255) for _ in range(3)))
    x0, y0 = rng.randint(0, cw - w), rng.randint(0, ch - h)
    bg.paste(v.img, (x0, y0))
    v.img = bg
    v.affine = _compose(v.affine, np.array([[1.0, 0, x0], [0, 1.0, y0]]))
    v.ops.append("placed on a larger canvas")
    v.labels.append(transform_label("on_canvas", True))


OPS = {"crop": op_crop, "flip": op_flip, "rotate": op_rotate, "lighting": op_lighting, "grayscale": op_grayscale,
       "blur": op_blur, "jpeg": op_jpeg, "occlude": op_occlude, "canvas": op_canvas}
# applied in this order when chosen together (geometry first, compression last)
_ORDER = ("crop", "canvas", "flip", "rotate", "lighting", "grayscale", "occlude", "blur", "jpeg")


def augment(img: Image.Image, rng: random.Random, boxes, n_ops: int | None = None) -> Variant:
    v = Variant(img=img.convert("RGB"), affine=np.array([[1.0, 0, 0], [0, 1.0, 0]]), labels=[], ops=[])
    k = n_ops or rng.choice([1, 1, 2, 2, 3])
    chosen = rng.sample(list(OPS), k)
    for name in _ORDER:
        if name in chosen:
            OPS[name](v, rng, boxes)
    return v


# ------------------------------------------------------------------ the offline source


def _save(img: Image.Image, path: Path, jpeg_quality: int | None) -> None:
    if path.is_file():
        return  # deterministic: a re-run (or a resume) produces the same file
    buf = io.BytesIO()
    if path.suffix == ".png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=jpeg_quality or 92)
    atomic_write(path, buf.getvalue())


def _person_anchors(notes: dict, name: str) -> list[tuple[Point, list[Label]]]:
    return [(tuple(p["center"]), person_labels(p.get("visible", {}))) for p in notes.get(name, {}).get("people", [])]


def _carry(v: Variant, anchors: list[tuple[Point, list[Label]]], size: tuple[int, int]):
    """Per-face human labels that stay true in the variant, anchored at the face centre's new position."""
    out = []
    w, h = size
    for centre, labels in anchors:
        x, y = _apply(v.affine, centre)
        if not (0 <= x < w and 0 <= y < h):
            continue
        hidden = any(p[0] <= x <= p[2] and p[1] - 0.5 * (p[3] - p[1]) <= y <= p[3] + (p[3] - p[1]) for p in v.occluded)
        for lb in labels:
            if hidden and lb.name in ("smile", "eyes_closed", "eyeglasses"):
                continue  # the patch may hide what the note describes
            if "grayscale" in " ".join(v.ops) and lb.name == "hair":
                continue  # a colour in the note is no longer visible
            out.append(((x, y), lb))
    return out


def offline_items(out_dir: str | Path, *, seed: int = 0, variants: int = 6, composites: int = 4,
                  held_out: float = 0.2, cache: AnalysisCache | None = None) -> list[SourceItem]:
    """The offline source: originals, ``variants`` augmented copies each, and ``composites`` side-by-side
    images per split. Images are written under ``out_dir/images`` (once; re-runs reuse them)."""
    from facellm.tools.assets import MissingAssetError
    from facellm.tools.photos import photo

    out_dir = Path(out_dir)
    cache = cache or AnalysisCache(out_dir / "cache" / "analysis")
    notes = load_notes()
    available: dict[str, Path] = {}
    for name in FACE_PHOTOS + NO_FACE_PHOTOS:
        try:
            available[name] = photo(name)
        except MissingAssetError:
            continue
    if not available:
        raise FileNotFoundError("no offline photos found; run `facellm setup` once")
    # photo-disjoint splits: a seeded order within faces / no-face photos, the first share held out
    split_of: dict[str, str] = {}
    for pool in (FACE_PHOTOS, NO_FACE_PHOTOS):
        names = sorted((n for n in pool if n in available), key=lambda n: stable_hash(seed, "split", n))
        n_test = round(len(names) * held_out) if len(names) >= 2 else 0
        if held_out > 0 and len(names) >= 2:
            n_test = max(1, n_test)
        for k, n in enumerate(names):
            split_of[n] = "test" if k < n_test else "train"

    items: list[SourceItem] = []
    for name, path in available.items():
        base = Image.open(path)
        base = ImageOps.exif_transpose(base).convert("RGB")
        fa = cache.get(path)
        boxes = [(f.box.x1, f.box.y1, f.box.x2, f.box.y2) for f in fa.faces]
        entry = notes.get(name, {})
        anchors = _person_anchors(notes, name)
        n_faces = entry.get("faces")
        for k in range(variants + 1):
            key = f"offline/{name}/v{k}"
            if k == 0:
                v = Variant(img=base, affine=np.array([[1.0, 0, 0], [0, 1.0, 0]]), labels=[], ops=[])
                target = out_dir / "images" / f"{name}_v0{path.suffix.lower()}"
                _save(base, target, None)
            else:
                rng = random.Random(stable_hash(seed, key))
                v = augment(base, rng, boxes)
                q = next((lb.value for lb in v.labels if lb.name == "jpeg_quality"), None)
                target = out_dir / "images" / f"{name}_v{k}.jpg"
                _save(v.img, target, q if isinstance(q, int) else 95)
            labels = list(v.labels)
            if v.ops:
                labels.append(transform_label("augmentation", "; ".join(v.ops)))
            if isinstance(n_faces, int) and not v.lost_faces:
                labels.append(human("num_faces", n_faces))
            if isinstance(entry.get("scene"), str):  # what a no-face photo shows, by eye
                labels.append(human("scene", entry["scene"]))
                if isinstance(entry.get("colour"), str) and "grayscale" not in v.ops:
                    labels.append(human("colour", entry["colour"]))
            items.append(SourceItem(key=key, image_path=str(target), source="offline", group=name,
                                    split=split_of[name], labels=labels,
                                    face_labels=_carry(v, anchors, v.img.size),
                                    meta={"photo": name, "augmentation": v.ops,
                                          "occluded": [{"box": [round(c, 1) for c in b], "region": r}
                                                       for b, r in zip(v.occluded, v.occluded_regions)]}))
    # several single-face photos side by side, only within one split (so no photo straddles splits)
    singles = [n for n in ("astronaut", "grace_hopper", "camera", "tom_hanks") if n in available]
    for split in ("train", "test"):
        pool = sorted(n for n in singles if split_of.get(n) == split)
        if split == "test":  # few single-face photos are held out: pair a held-out photo with its own variants
            pool = pool * 2
        if len(pool) < 2:
            continue
        for c in range(composites):
            rng = random.Random(stable_hash(seed, "composite", split, c))
            names = rng.sample(pool, min(len(pool), rng.choice([2, 3])))
            key = f"offline/composite/{split}/{c}"
            target = out_dir / "images" / f"composite_{split}_{c}.jpg"
            img, anchors_all = _composite(names, available, notes, rng, cache)
            _save(img, target, 92)
            items.append(SourceItem(
                key=key, image_path=str(target), source="offline", group="+".join(sorted(set(names))), split=split,
                labels=[human("num_faces", sum(notes[n]["faces"] for n in names)),
                        transform_label("composite_of", len(names)),
                        transform_label("augmentation", f"{len(names)} photos side by side")],
                face_labels=anchors_all, meta={"photo": names, "augmentation": ["side by side"]}))
    return items


def _composite(names, available, notes, rng: random.Random, cache: AnalysisCache):
    height = 320
    tiles, anchors = [], []
    x = 0
    for n in names:
        im = ImageOps.exif_transpose(Image.open(available[n])).convert("RGB")
        # crop around the face so the tiles show faces of similar size
        fa = cache.get(available[n])
        if fa.faces:
            b = max(fa.faces, key=lambda f: f.box.area).box.scaled(rng.uniform(2.0, 3.0)).clipped(im.width, im.height)
            crop = (int(b.x1), int(b.y1), int(b.x2), int(b.y2))
        else:
            crop = (0, 0, im.width, im.height)
        im = im.crop(crop)
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
            flipped = True
        else:
            flipped = False
        s = height / im.height
        tile = im.resize((max(1, round(im.width * s)), height), Image.BILINEAR)
        for centre, labels in _person_anchors(notes, n):
            cx, cy = (centre[0] - crop[0]), (centre[1] - crop[1])
            if flipped:
                cx = (crop[2] - crop[0]) - 1 - cx
            for lb in labels:
                anchors.append(((x + cx * s, cy * s), lb))
        tiles.append(tile)
        x += tile.width + 8
    canvas = Image.new("RGB", (x - 8, height), (235, 235, 235))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width + 8
    return canvas, anchors


def image_sha(path: str) -> str:
    return file_sha256(path)
