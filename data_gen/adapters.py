"""Dataset adapters: a labelled face dataset, in its own file layout, -> ``SourceItem``s with human labels.

Every adapter reads a local copy (nothing downloads here) in the layout the dataset is distributed in:

* ``fairface``: ``fairface_label_train.csv`` / ``fairface_label_val.csv`` (``file,age,gender,race,service_test``;
  ``file`` is ``train/1.jpg``), images under the same folder.
* ``utkface``: a folder of ``{age}_{gender}_{race}_{datetime}.jpg[.chip.jpg]`` (gender 0 male / 1 female; race
  0 White, 1 Black, 2 Asian, 3 Indian, 4 Others).
* ``celeba``: ``list_attr_celeba.txt`` (count line, 40 attribute names, ``000001.jpg -1 1 ...``),
  ``identity_CelebA.txt``, ``list_eval_partition.txt``, images in ``img_align_celeba/``.
* ``rafdb``: RAF-DB basic (``EmotionLabel/list_patition_label.txt`` + ``Image/aligned/*_aligned.jpg`` or
  ``Image/original/``), the class-folder layout (``train/3/x.jpg`` with RAF-DB's 1..7, or ``train/happy/x.jpg``)
  and AffectNet's (``train_set/images/0.jpg`` + ``train_set/annotations/0_exp.npy``).
* ``csv``: a CSV / JSON / JSONL table with an image column and label columns, images relative to the table.
* ``hf:ID`` or ``hf:PATH``: any ``datasets`` dataset (hub id from the local cache, a ``save_to_disk`` folder, or a
  folder ``load_dataset`` reads); image bytes are written once under ``out/images/hf``.

Labels from a dataset are ``human`` labels (annotations), anchored to the largest detected face (these
datasets hold one face per image); the pipeline adds the tools' model estimates beside them, never in place of
them. A dataset's split and identity are kept: ``group`` is the identity where one exists (so splits are
identity-disjoint), else the image.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .schema import Label, human
from .sources import SourceItem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DatasetLayoutError(ValueError):
    """The folder does not hold the files the adapter expects; the message names what is missing."""


# ------------------------------------------------------------------ shared label vocabulary

# canonical expression names (the tools' classifier uses the same seven + contempt from AffectNet)
EXPRESSION_WORDS = {
    "neutral": "neutral", "happy": "happy", "happiness": "happy", "joy": "happy", "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise", "fear": "fear", "fearful": "fear", "disgust": "disgust",
    "disgusted": "disgust", "angry": "angry", "anger": "angry", "contempt": "contempt",
}
RAFDB_CLASSES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}
AFFECTNET_CLASSES = {0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry",
                     7: "contempt"}
UTK_RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
FAIRFACE_RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
# CelebA attribute -> (our label name, invert). "Attractive" is a judgement of a person, not of the image:
# it is never turned into a label. "No_Beard" becomes beard with the value inverted.
CELEBA_ATTRS = {
    "Eyeglasses": ("eyeglasses", False), "Smiling": ("smile", False), "Wearing_Hat": ("wearing_hat", False),
    "Mustache": ("mustache", False), "No_Beard": ("beard", True), "Bald": ("bald", False),
    "Wearing_Earrings": ("earrings", False), "Mouth_Slightly_Open": ("mouth_open", False),
    "Blurry": ("blurry", False), "Young": ("young", False), "Wearing_Lipstick": ("lipstick", False),
    "Wearing_Necklace": ("necklace", False), "Wearing_Necktie": ("necktie", False), "Bangs": ("bangs", False),
    "Goatee": ("goatee", False), "Sideburns": ("sideburns", False), "Heavy_Makeup": ("heavy_makeup", False),
    "Black_Hair": ("black_hair", False), "Blond_Hair": ("blond_hair", False), "Brown_Hair": ("brown_hair", False),
    "Gray_Hair": ("gray_hair", False), "Wavy_Hair": ("wavy_hair", False), "Straight_Hair": ("straight_hair", False),
}
CELEBA_DROPPED = {"Attractive"}
SPLIT_WORDS = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "dev": "validation", "test": "test", "testing": "test"}


def norm_gender(value: Any) -> str | None:
    v = str(value).strip().lower()
    return {"male": "male", "m": "male", "man": "male", "female": "female", "f": "female", "woman": "female"}.get(v)


def norm_expression(value: Any) -> str | None:
    return EXPRESSION_WORDS.get(str(value).strip().lower())


def norm_split(value: Any) -> str | None:
    return SPLIT_WORDS.get(str(value).strip().lower())


def age_value(value: Any) -> tuple[str, Any] | None:
    """An age annotation as a label: ``("age", 31)`` or ``("age_range", [20, 29])`` (FairFace bins)."""
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return "age", int(float(text))
    if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", text):
        return "age_range", [float(m.group(1)), float(m.group(2))]
    if m := re.fullmatch(r"(?:more than|over|>)\s*(\d+)", text):
        return "age_range", [float(m.group(1)), 100.0]
    return None


def _key_part(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _item(source: str, root: Path, image: Path, labels: list[Label], *, split: str | None = None,
          identity: str | None = None, meta: dict | None = None) -> SourceItem:
    """One single-face image: labels anchored to the largest face; group = identity, else the image."""
    rel = _key_part(image, root)
    group = f"{source}:id:{identity}" if identity is not None else f"{source}:img:{rel}"
    face_labels = [(None, lb) for lb in labels if lb.face_id is None]
    m = {"dataset_file": rel, **(meta or {})}
    if identity is not None:
        m["identity"] = str(identity)
    return SourceItem(key=f"{source}/{rel}", image_path=str(image), source=source, group=group, split=split,
                      labels=[], face_labels=face_labels, meta=m)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"{what} not found: {path}")
    return path


# ------------------------------------------------------------------ FairFace


def fairface_items(root: str | Path) -> Iterator[SourceItem]:
    root = Path(root)
    tables = [(root / f"fairface_label_{s}.csv", s) for s in ("train", "val")]
    tables = [(p, s) for p, s in tables if p.is_file()]
    if not tables:
        raise DatasetLayoutError(f"no fairface_label_train.csv or fairface_label_val.csv in {root}")
    for table, split in tables:
        with open(table, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"file", "age", "gender", "race"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetLayoutError(f"{table.name} lacks the column(s) {sorted(missing)}")
            for row in reader:
                image = root / row["file"]
                if not image.is_file():
                    continue  # a partial copy: skip what is absent
                labels = []
                if (a := age_value(row["age"])) is not None:
                    labels.append(human(*a))
                if (g := norm_gender(row["gender"])) is not None:
                    labels.append(human("gender", g))
                if row["race"] in FAIRFACE_RACES:
                    labels.append(human("race", row["race"]))
                yield _item("fairface", root, image, labels, split=norm_split(split),
                            meta={"service_test": row.get("service_test")})


# ------------------------------------------------------------------ UTKFace

_UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)")
MAIN_FACE_RULE = "the largest detected face (ties: the one closest to the image centre)"
TIGHT_CROP = "tight face crop: analysed padded if the detector finds no face on it"


def _skip(skipped: list[dict] | None, source: str, path: Path, reason: str) -> None:
    if skipped is not None:
        skipped.append({"source": source, "file": str(path), "reason": reason})


def _warn_skipped(source: str, names: list[str], reason: str) -> None:
    """One warning for all the files a dataset's adapter had to leave out (never one per file)."""
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        warnings.warn(f"{source}: skipped {len(names)} file(s) {reason}: {shown}", DatasetWarning, stacklevel=3)


class DatasetWarning(UserWarning):
    """Rows of a real dataset that had to be left out (counted in the run's stats)."""


def utkface_items(root: str | Path, *, skipped: list[dict] | None = None, seed: int = 0) -> Iterator[SourceItem]:
    """UTKFace ``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg``: age, gender and the race group as human labels.

    The race group only groups fairness reports (no answer states it). A name with a field missing is
    skipped and counted, with one warning for all of them. Each photo is its own split group."""
    from .splits import split_for

    root = Path(root)
    files = sorted(p for p in _require(root, "UTKFace folder").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetLayoutError(f"no images in {root}")
    found, bad = 0, []
    for image in files:
        m = _UTK_NAME.match(image.name)
        if m is None:
            bad.append(image.name)
            _skip(skipped, "utkface", image, "file name lacks a field of AGE_GENDER_RACE_DATETIME")
            continue
        found += 1
        age, gender, race = int(m.group(1)), int(m.group(2)), int(m.group(3))
        labels = [human("age", age), human("gender", "male" if gender == 0 else "female")]
        if race != 4:  # "Others" says nothing
            labels.append(human("race", UTK_RACES[race]))
        item = _item("utkface", root, image, labels, meta={"tight_crop": TIGHT_CROP})
        item.split = split_for(item.group, seed=seed)
        yield item
    if not found:
        raise DatasetLayoutError(f"no file in {root} is named age_gender_race_datetime.jpg as UTKFace names them")
    _warn_skipped("utkface", bad, "whose name lacks a field (AGE_GENDER_RACE_DATETIME)")


# ------------------------------------------------------------------ FER2013 (class folders)

FER_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# 48x48 faces: the face parser (hair / skin regions) has nothing to resolve at that size and cost a quarter of the
# tools' time per image; every other tool runs
FER_STEPS = ("mesh", "landmarks68", "pose", "cues", "attributes", "expression", "quality")


def fer2013_items(root: str | Path, *, skipped: list[dict] | None = None, seed: int = 0) -> Iterator[SourceItem]:
    """FER2013 in class folders: ``train/CLASS/*.png|jpg`` and ``validation/CLASS/`` (48x48 grey).

    The label is the human expression class. ``validation`` (the public test half) is our ``test``; our own
    validation split is carved out of ``train`` by the hash of the photo."""
    from .splits import split_for

    root = Path(root)
    parts = [(root / d, s) for d, s in (("train", "train"), ("validation", "validation"), ("val", "validation"),
                                        ("test", "validation")) if (root / d).is_dir()]
    if not parts:
        raise DatasetLayoutError(f"{root}: no train/ or validation/ class folders (train/happy/x.png) of FER2013")
    found = 0
    for folder, dataset_split in parts:
        for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            expr = norm_expression(cls_dir.name)
            if expr is None or expr not in FER_CLASSES:
                for image in sorted(cls_dir.iterdir()):
                    _skip(skipped, "fer2013", image, f"unknown class folder {cls_dir.name!r}")
                continue
            for image in sorted(cls_dir.iterdir()):
                if image.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                found += 1
                item = _item("fer2013", root, image, [human("expression", expr)],
                             meta={"tight_crop": TIGHT_CROP, "dataset_split": folder.name,
                                   "analysis_steps": list(FER_STEPS)})
                item.split = split_for(item.group, dataset_split, seed=seed)
                yield item
    if not found:
        raise DatasetLayoutError(f"{root}: no images in the class folders ({', '.join(FER_CLASSES)})")


# ------------------------------------------------------------------ CelebA


def _celeba_images(root: Path) -> Path:
    for name in ("img_align_celeba", "img_celeba", "img_align_celeba_png"):
        if (root / name).is_dir():
            # the official zip unpacks to img_align_celeba/img_align_celeba on some mirrors
            inner = root / name / name
            return inner if inner.is_dir() else root / name
    raise DatasetLayoutError(f"no img_align_celeba/ or img_celeba/ folder in {root}")


def _find(root: Path, name: str) -> Path | None:
    for p in (root / name, root / "Anno" / name, root / "Eval" / name):
        if p.is_file():
            return p
    return None


def _celeba_identity(root: Path) -> dict[str, str]:
    identity: dict[str, str] = {}
    if (p := _find(root, "identity_CelebA.txt")) is not None:
        for line in p.read_text().splitlines():
            if len(parts := line.split()) == 2:
                identity[parts[0]] = parts[1]
    return identity


def celeba_items(root: str | Path, *, skipped: list[dict] | None = None, seed: int = 0) -> Iterator[SourceItem]:
    """CelebA: attributes (``list_attr_celeba.txt``) and/or identities (``identity_CelebA.txt``).

    Identity-only copies (no attribute file) are read too: each photo's label is its identity, which belongs to
    the photo's main face (``MAIN_FACE_RULE``, recorded in the item). Splits are identity-disjoint: the
    dataset's ``list_eval_partition.txt`` where present, else the split rule's hash of the identity."""
    from .splits import split_for

    root = Path(root)
    images = _celeba_images(root)
    attr_file = _find(root, "list_attr_celeba.txt")
    identity = _celeba_identity(root)
    if attr_file is None and not identity:
        raise DatasetLayoutError(f"neither list_attr_celeba.txt nor identity_CelebA.txt in {root} (or its Anno/ folder)")
    partition: dict[str, str] = {}
    if (p := _find(root, "list_eval_partition.txt")) is not None:
        for line in p.read_text().splitlines():
            if len(parts := line.split()) == 2:
                partition[parts[0]] = {"0": "train", "1": "validation", "2": "test"}.get(parts[1], "train")
    meta = {"label_face": MAIN_FACE_RULE, "photo_kind": images.name}

    def item(name: str, labels: list[Label]) -> SourceItem:
        ident = identity.get(name)
        if ident is not None:
            labels = [*labels, human("celeba_identity", ident)]
        it = _item("celeba", root, images / name, labels, identity=ident, meta=meta)
        if partition.get(name) is not None:
            it.split = partition[name]
        else:  # identity-disjoint (photo-disjoint for a photo without an identity)
            it.split = split_for(it.group, seed=seed)
        return it

    if attr_file is None:  # identities only
        missing = []
        for name in sorted(identity):
            if not (images / name).is_file():
                missing.append(name)
                continue
            yield item(name, [])
        if len(missing) == len(identity):
            raise DatasetLayoutError(f"none of the {len(identity)} images named in identity_CelebA.txt is in {images}")
        return
    with open(attr_file, encoding="utf-8") as f:
        f.readline()  # the image count
        names = f.readline().split()
        if len(names) != 40 or "Smiling" not in names:
            raise DatasetLayoutError(f"{attr_file.name}: line 2 should name the 40 CelebA attributes")
        for line in f:
            parts = line.split()
            if len(parts) != len(names) + 1:
                continue
            if not (images / parts[0]).is_file():
                continue
            labels = []
            for attr, raw in zip(names, parts[1:]):
                if attr == "Male":
                    labels.append(human("gender", "male" if raw == "1" else "female"))
                elif attr in CELEBA_ATTRS:
                    name, invert = CELEBA_ATTRS[attr]
                    labels.append(human(name, (raw == "1") != invert))
            yield item(parts[0], labels)


# ------------------------------------------------------------------ RAF-DB / AffectNet-style expression sets


def _rafdb_list(root: Path) -> Path | None:
    for p in (root / "EmotionLabel" / "list_patition_label.txt", root / "basic" / "EmotionLabel" /
              "list_patition_label.txt", root / "list_patition_label.txt"):
        if p.is_file():
            return p
    return None


def _rafdb_image(root: Path, name: str) -> Path | None:
    stem = Path(name).stem
    for base in (root, root / "basic"):
        for p in (base / "Image" / "aligned" / f"{stem}_aligned.jpg", base / "Image" / "original" / name):
            if p.is_file():
                return p
    return None


def expression_items(root: str | Path) -> Iterator[SourceItem]:
    """RAF-DB basic, class folders (RAF-DB numbers or names) or AffectNet's npy annotations, detected in turn."""
    root = Path(root)
    if (lst := _rafdb_list(root)) is not None:
        for line in lst.read_text().splitlines():
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in RAFDB_CLASSES:
                continue
            image = _rafdb_image(root, parts[0])
            if image is None:
                continue
            yield _item("rafdb", root, image, [human("expression", RAFDB_CLASSES[int(parts[1])])],
                        split=norm_split(parts[0].split("_")[0]))
        return
    affect = [d for d in (root / "train_set", root / "val_set") if (d / "annotations").is_dir()]
    if affect:
        import numpy as np

        for d in affect:
            split = "train" if d.name == "train_set" else "validation"
            for image in sorted((d / "images").glob("*")):
                ann = d / "annotations" / f"{image.stem}_exp.npy"
                if image.suffix.lower() not in IMAGE_SUFFIXES or not ann.is_file():
                    continue
                cls = int(np.load(ann).reshape(-1)[0])
                if cls not in AFFECTNET_CLASSES:
                    continue  # 8 none, 9 uncertain, 10 no face
                labels = [human("expression", AFFECTNET_CLASSES[cls])]
                for dim in ("val", "aro"):
                    if (f := d / "annotations" / f"{image.stem}_{dim}.npy").is_file():
                        labels.append(human("valence" if dim == "val" else "arousal",
                                            round(float(np.load(f).reshape(-1)[0]), 3)))
                yield _item("affectnet", root, image, labels, split=split)
        return
    # class folders: split/class/image or class/image, class a RAF-DB number (1..7) or an expression word
    found = False
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = image.relative_to(root).parts
        if len(rel) < 2:
            continue
        cls = rel[-2]
        expr = RAFDB_CLASSES.get(int(cls)) if cls.isdigit() else norm_expression(cls)
        if expr is None:
            continue
        found = True
        split = norm_split(rel[0]) if len(rel) >= 3 else None
        yield _item("rafdb", root, image, [human("expression", expr)], split=split)
    if not found:
        raise DatasetLayoutError(f"{root}: no RAF-DB list_patition_label.txt, AffectNet train_set/annotations, "
                                 "or class folders (train/happy/x.jpg, train/4/x.jpg)")


# ------------------------------------------------------------------ generic table + image folder

IMAGE_COLUMNS = ("image", "image_path", "file", "filename", "file_name", "path", "img", "img_path")
IDENTITY_COLUMNS = ("identity", "person_id", "identity_id", "subject", "subject_id", "celeb_id", "id_num")
SPLIT_COLUMNS = ("split", "partition", "subset")
BOOL_LABELS = {"smile", "smiling", "eyeglasses", "glasses", "wearing_hat", "hat", "beard", "mustache", "earrings",
               "bald", "mouth_open", "eyes_closed", "blurry"}
_BOOL_RENAME = {"smiling": "smile", "glasses": "eyeglasses", "hat": "wearing_hat"}


def _bool(v: Any) -> bool | None:
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "t"):
        return True
    if s in ("0", "-1", "false", "no", "n", "f"):
        return False
    return None


def row_labels(row: dict[str, Any], columns: dict[str, str] | None = None) -> list[Label]:
    """Human labels from a table row, by column name (``columns`` renames: ``{"Sex": "gender"}``)."""
    out: list[Label] = []
    for col, raw in row.items():
        if raw is None or raw == "":
            continue
        name = (columns or {}).get(col, col).strip().lower()
        if name in ("age", "age_group", "age_range"):
            if (a := age_value(raw)) is not None:
                out.append(human(*a))
        elif name in ("gender", "sex"):
            if (g := norm_gender(raw)) is not None:
                out.append(human("gender", g))
        elif name in ("race", "race_group", "ethnicity"):
            out.append(human("race", str(raw)))
        elif name in ("expression", "emotion", "facial_expression"):
            if (e := norm_expression(raw)) is not None:
                out.append(human("expression", e))
        elif name in BOOL_LABELS:
            if (b := _bool(raw)) is not None:
                out.append(human(_BOOL_RENAME.get(name, name), b))
    return out


def _table_rows(table: Path) -> Iterator[dict[str, Any]]:
    if table.suffix.lower() == ".csv":
        with open(table, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    elif table.suffix.lower() == ".jsonl":
        with open(table, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DatasetLayoutError(f"{table.name} line {n} is not JSON: {e.msg}") from None
    elif table.suffix.lower() == ".json":
        data = json.loads(table.read_text(encoding="utf-8"))
        rows = data.get("images", data.get("data")) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise DatasetLayoutError(f"{table.name}: expected a list of objects (or {{'images': [...]}})")
        yield from rows
    else:
        raise DatasetLayoutError(f"{table}: the table must be .csv, .json or .jsonl")


def _find_table(root: Path) -> Path:
    for pattern in ("*.csv", "*.jsonl", "*.json"):
        found = sorted(root.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DatasetLayoutError(f"{root} holds several tables ({names}); pass the one to use as --path")
    raise DatasetLayoutError(f"no .csv, .json or .jsonl table in {root}")


def table_items(path: str | Path, *, columns: dict[str, str] | None = None, source: str = "csv") -> Iterator[SourceItem]:
    path = Path(path)
    table = _find_table(path) if path.is_dir() else _require(path, "table")
    root = table.parent
    first = True
    for row in _table_rows(table):
        if first:
            keys = {(columns or {}).get(k, k).lower(): k for k in row}
            img_col = next((keys[c] for c in IMAGE_COLUMNS if c in keys), None)
            if img_col is None:
                raise DatasetLayoutError(f"{table.name} has no image column (one of {', '.join(IMAGE_COLUMNS)})")
            id_col = next((keys[c] for c in IDENTITY_COLUMNS if c in keys), None)
            split_col = next((keys[c] for c in SPLIT_COLUMNS if c in keys), None)
            first = False
        image = (root / str(row[img_col])).resolve()
        if not image.is_file():
            continue
        skip = {img_col, id_col, split_col}
        labels = row_labels({k: v for k, v in row.items() if k not in skip}, columns)
        ident = row.get(id_col) if id_col else None
        yield _item(source, root, image, labels, split=norm_split(row[split_col]) if split_col else None,
                    identity=None if ident in (None, "") else str(ident))


# ------------------------------------------------------------------ HF datasets


def _load_hf(spec: str):
    import datasets

    p = Path(spec)
    try:
        if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file()
                           or (p / "state.json").is_file()):
            return datasets.load_from_disk(str(p))
        return datasets.load_dataset(spec)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise DatasetLayoutError(f"cannot load the datasets dataset {spec!r} offline: {e}") from None


def _class_name(feature, value):
    from datasets import ClassLabel

    if isinstance(feature, ClassLabel) and isinstance(value, int) and value >= 0:
        return feature.int2str(value)
    return value


def hf_items(spec: str, out_dir: str | Path, *, columns: dict[str, str] | None = None) -> Iterator[SourceItem]:
    """Rows of a ``datasets`` dataset; its image column's bytes are written once to ``out_dir/images/hf``."""
    from datasets import DatasetDict, Image

    ds = _load_hf(spec)
    splits = ds.items() if isinstance(ds, DatasetDict) else [(None, ds)]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec).name if Path(spec).exists() else spec).strip("_") or "hf"
    img_dir = Path(out_dir) / "images" / "hf" / name
    for split_name, part in splits:
        feats = part.features
        img_col = next((c for c, f in feats.items() if isinstance(f, Image)), None)
        if img_col is None:
            raise DatasetLayoutError(f"{spec}: no column of type Image (columns: {list(feats)})")
        part = part.cast_column(img_col, Image(decode=False))
        lower = {(columns or {}).get(c, c).lower(): c for c in feats}
        id_col = next((lower[c] for c in IDENTITY_COLUMNS if c in lower), None)
        celeba_cols = [c for c in feats if c in CELEBA_ATTRS or c == "Male"]
        for idx, row in enumerate(part):
            img = row[img_col]
            data = img.get("bytes")
            src = img.get("path")
            if data is None and src and Path(src).is_file():
                data = Path(src).read_bytes()
            if not data:
                continue
            suffix = Path(src).suffix.lower() if src and Path(src).suffix.lower() in IMAGE_SUFFIXES else ".png"
            digest = hashlib.sha256(data).hexdigest()
            target = img_dir / f"{digest[:16]}{suffix}"
            if not target.is_file():
                from .evidence import atomic_write

                atomic_write(target, data)
            plain = {c: _class_name(feats[c], row[c]) for c in feats if c not in (img_col, id_col)}
            labels = row_labels({c: v for c, v in plain.items() if c not in celeba_cols}, columns)
            for c in celeba_cols:
                v = row[c]
                b = v if isinstance(v, bool) else _bool(v)
                if b is None:
                    continue
                if c == "Male":
                    labels.append(human("gender", "male" if b else "female"))
                else:
                    lname, invert = CELEBA_ATTRS[c]
                    labels.append(human(lname, b != invert))
            ident = row.get(id_col) if id_col else None
            key_rel = f"{split_name or 'data'}/{idx:08d}"
            item = _item(f"hf:{name}", img_dir, target, labels, split=norm_split(split_name) if split_name else None,
                         identity=None if ident in (None, "") else str(ident), meta={"hf_row": idx})
            item.key = f"hf:{name}/{key_rel}"
            yield item


# ------------------------------------------------------------------ dispatch

SOURCES = ("offline", "facedata", "fairface", "utkface", "fer2013", "celeba", "rafdb", "affectnet", "csv", "json",
           "hf:ID")
# the layout of ../shared/data (and of a user's folder holding the three datasets side by side)
FACEDATA_PARTS = (("utkface", "utkface/crop_part1"), ("fer2013", "fer2013"), ("celeba", "celeba"))


def facedata_items(root: str | Path, *, skipped: list[dict] | None = None, seed: int = 0) -> Iterator[SourceItem]:
    """UTKFace, FER2013 and CelebA from one folder (``utkface/crop_part1``, ``fer2013``, ``celeba``); at least one."""
    root = Path(root)
    present = [(name, root / sub) for name, sub in FACEDATA_PARTS if (root / sub).is_dir()]
    if not present:
        raise DatasetLayoutError(f"{root} holds none of {', '.join(sub for _, sub in FACEDATA_PARTS)}")
    readers = {"utkface": utkface_items, "fer2013": fer2013_items, "celeba": celeba_items}
    for name, folder in present:
        yield from readers[name](folder, skipped=skipped, seed=seed)


def parse_columns(text: str | None) -> dict[str, str]:
    """``"Sex=gender,Age=age"`` -> ``{"Sex": "gender", "Age": "age"}``."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if part.strip():
            if "=" not in part:
                raise ValueError(f"--columns entries look like COLUMN=label, got {part!r}")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def items_from_spec(source: str, path: str | Path | None, out_dir: str | Path, *,
                    columns: dict[str, str] | None = None, skipped: list[dict] | None = None,
                    seed: int = 0) -> Iterable[SourceItem]:
    """The items of a non-offline source (see ``SOURCES``)."""
    if source.startswith("hf:"):
        return hf_items(source[3:] or str(path), out_dir, columns=columns)
    if path is None:
        raise ValueError(f"--source {source} needs --path (the local copy of the dataset)")
    if not Path(path).exists():
        raise DatasetLayoutError(f"{path} does not exist")
    if source == "fairface":
        return fairface_items(path)
    if source == "facedata":
        return facedata_items(path, skipped=skipped, seed=seed)
    if source == "utkface":
        return utkface_items(path, skipped=skipped, seed=seed)
    if source in ("fer2013", "fer"):
        return fer2013_items(path, skipped=skipped, seed=seed)
    if source == "celeba":
        return celeba_items(path, skipped=skipped, seed=seed)
    if source in ("rafdb", "affectnet", "expression"):
        return expression_items(path)
    if source in ("csv", "json", "table"):
        return table_items(path, columns=columns)
    raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
