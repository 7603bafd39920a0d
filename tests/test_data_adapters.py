"""Dataset adapters on small local copies in each dataset's real layout (tests/datagen_fixtures.py), then the
pipeline over each: human labels arrive as human labels, the tools' estimates beside them, splits hold."""

from __future__ import annotations

from pathlib import Path

import datagen_fixtures as fx
import pytest

from facellm.data_gen.adapters import (DatasetLayoutError, DatasetWarning, items_from_spec, parse_columns,
                                       row_labels)
from facellm.data_gen.pipeline import GenerateConfig, Generator
from facellm.data_gen.loader import load_records


def _labels(item) -> dict[str, object]:
    return {lb.name: lb.value for _, lb in item.face_labels}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analysis_cache")


def _run(tmp_path: Path, cache: Path, source: str, path, **kw) -> list:
    out = tmp_path / "out"
    cfg = GenerateConfig(source=source, path=None if path is None else str(path), out=out, cache_dir=cache,
                         styles=("fairfacegpt", "faceinstruct", "facecaption"), progress=False, export_hf=False, **kw)
    stats = Generator(cfg).run()
    records = list(load_records(out))
    assert stats.written == len(records) > 0
    # every fixture image is one face crop: the tools find it, so the human labels attach to face 1
    assert all(r.faces is not None and r.faces.num_faces == 1 for r in records)
    assert all(lb.face_id == 1 for r in records for lb in r.labels if lb.kind == "human" and lb.name != "num_faces")
    return records


def test_fairface(tmp_path, cache):
    root = fx.fairface(tmp_path / "fairface")
    items = list(items_from_spec("fairface", root, tmp_path))
    assert [it.key for it in items] == ["fairface/train/1.jpg", "fairface/train/2.jpg", "fairface/train/3.jpg",
                                        "fairface/val/1.jpg"]
    assert _labels(items[1]) == {"age_range": [70.0, 100.0], "gender": "female", "race": "White"}
    assert _labels(items[3])["age_range"] == [20.0, 29.0] and items[3].split == "validation"
    assert all(lb.kind == "human" and lb.source == "human" for it in items for _, lb in it.face_labels)
    records = _run(tmp_path, cache, "fairface", root)
    # FairFace has no test split: its validation split is held out as the test split
    assert {r.split for r in records if r.meta["dataset_file"] == "val/1.jpg"} == {"test"}
    assert {r.split for r in records if r.meta["dataset_file"].startswith("train/")} == {"train"}
    rec = next(r for r in records if r.meta["dataset_file"] == "train/2.jpg")
    human = {lb.name: lb.value for lb in rec.labels if lb.kind == "human"}
    assert human == {"age_range": [70.0, 100.0], "gender": "female", "race": "White"}
    model = [lb for lb in rec.labels if lb.kind == "model"]
    assert {"perceived_age", "perceived_gender", "expression", "head_pose"} <= {lb.name for lb in model}
    assert all(lb.source not in ("human", "transform") and lb.face_id == 1 for lb in model if lb.name != "num_faces")
    assert rec.faces is not None and rec.faces.num_faces == 1 and rec.faces.faces[0].mesh478 is None  # compacted


def test_utkface(tmp_path, cache):
    root = fx.utkface(tmp_path / "utk")
    with pytest.warns(DatasetWarning, match="skipped 1 file"):
        items = list(items_from_spec("utkface", root / "UTKFace", tmp_path))
    assert len(items) == 3  # the file without a race field is left out
    by_age = {_labels(it)["age"]: _labels(it) for it in items}
    assert by_age[35] == {"age": 35, "gender": "female", "race": "White"}
    assert by_age[24] == {"age": 24, "gender": "male"}  # race 4 "Others" says nothing
    records = _run(tmp_path, cache, "utkface", root / "UTKFace", composites=0)
    ages = [lb.value for r in records for lb in r.labels if lb.name == "age" and lb.kind == "human"]
    assert set(ages) == {35, 79, 24}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images"):
        list(items_from_spec("utkface", tmp_path / "empty", tmp_path))


def test_celeba_attributes_identity_and_disjoint_splits(tmp_path, cache):
    root = fx.celeba(tmp_path / "celeba")
    items = list(items_from_spec("celeba", root, tmp_path))
    assert [it.meta["identity"] for it in items] == ["2880", "2937", "2880", "8692"]
    lab = _labels(items[1])
    assert lab["eyeglasses"] is True and lab["wearing_hat"] is True and lab["gender"] == "female"
    assert lab["beard"] is False and lab["smile"] is False and "attractive" not in {n.lower() for n in lab}
    assert _labels(items[3])["gender"] == "male" and _labels(items[3])["beard"] is True  # No_Beard = -1
    assert items[0].group == items[2].group == "celeba:id:2880"
    records = _run(tmp_path, cache, "celeba", root, composites=0)
    splits: dict[str, set[str]] = {}
    for r in records:
        splits.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())  # identity-disjoint
    # list_eval_partition.txt decides where it exists (2 = test, 0 = train)
    assert splits["celeba:id:2937"] == {"test"} and splits["celeba:id:2880"] == {"train"}
    # an answer about glasses on the Grace Hopper crop comes from the human attribute
    texts = " ".join(a for r in records if r.group == "celeba:id:2937" for a in r.answers())
    assert "glasses" in texts.lower()


def test_rafdb_list_layout(tmp_path, cache):
    root = fx.rafdb(tmp_path / "raf")
    items = list(items_from_spec("rafdb", root, tmp_path))
    assert [(it.meta["dataset_file"].split("/")[-1], _labels(it)["expression"], it.split) for it in items] == [
        ("train_00001_aligned.jpg", "happy", "train"), ("train_00002_aligned.jpg", "neutral", "train"),
        ("test_0001_aligned.jpg", "neutral", "test")]
    records = _run(tmp_path, cache, "rafdb", root)
    happy = [r for r in records if r.meta["dataset_file"].endswith("train_00001_aligned.jpg")]
    expr = [lb for lb in happy[0].labels if lb.name == "expression"]
    assert {(lb.kind, lb.value) for lb in expr if lb.kind == "human"} == {("human", "happy")}
    assert any(lb.kind == "model" for lb in expr)  # the classifier's estimate is kept beside, not merged


def test_expression_class_folders_and_affectnet(tmp_path):
    folders = list(items_from_spec("rafdb", fx.expression_folders(tmp_path / "ef"), tmp_path))
    assert [(_labels(it)["expression"], it.split) for it in folders] == [("neutral", "test"), ("happy", "train")]
    aff = list(items_from_spec("affectnet", fx.affectnet(tmp_path / "an"), tmp_path))
    assert [_labels(it) for it in aff] == [{"expression": "happy", "valence": 0.72, "arousal": 0.31},
                                           {"expression": "neutral", "valence": 0.05, "arousal": -0.1}]
    assert aff[0].source == "affectnet" and aff[0].split == "train"
    with pytest.raises(DatasetLayoutError, match="no RAF-DB"):
        list(items_from_spec("rafdb", tmp_path / "ef" / "train" / "happy", tmp_path))


def test_generic_csv_and_jsonl(tmp_path, cache):
    root = fx.table_csv(tmp_path / "csv")
    cols = parse_columns("Sex=gender")
    items = list(items_from_spec("csv", root / "labels.csv", tmp_path, columns=cols))
    assert len(items) == 2  # the row whose image is missing is skipped
    assert _labels(items[0]) == {"age": 42, "gender": "female", "expression": "happy", "eyeglasses": False}
    assert items[0].meta["identity"] == "A" and items[1].split == "test"
    j = list(items_from_spec("json", fx.table_jsonl(tmp_path / "js"), tmp_path))
    assert _labels(j[0]) == {"age_range": [20.0, 29.0], "gender": "male", "smile": False}
    records = _run(tmp_path, cache, "csv", root / "labels.csv", columns=cols)
    assert {r.split for r in records if r.meta["identity"] == "B"} == {"test"}
    with pytest.raises(ValueError, match="COLUMN=label"):
        parse_columns("Sex")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "t.csv").write_text("name,age\nx,3\n")
    with pytest.raises(DatasetLayoutError, match="no image column"):
        list(items_from_spec("csv", tmp_path / "bad", tmp_path))


def test_hf_saved_dataset(tmp_path, cache):
    path = fx.hf_saved(tmp_path)
    items = list(items_from_spec(f"hf:{path}", None, tmp_path / "out"))
    assert len(items) == 3 and all(Path(it.image_path).is_file() for it in items)
    assert _labels(items[0]) == {"age_range": [30.0, 39.0], "gender": "female", "race": "White"}
    assert [it.split for it in items] == ["train", "train", "validation"]
    assert len({it.key for it in items}) == 3
    records = _run(tmp_path, cache, f"hf:{path}", None)
    assert {r.source for r in records} == {"hf:fairface_hf"}
    assert {r.split for r in records} == {"train", "test"}


def test_hf_imagefolder_with_celeba_columns(tmp_path):
    path = fx.hf_imagefolder(tmp_path)
    items = list(items_from_spec(f"hf:{path}", None, tmp_path / "out"))
    assert len(items) == 2
    lab = {it.meta["identity"]: _labels(it) for it in items}
    assert lab["2880"] == {"smile": True, "eyeglasses": False, "gender": "female"}  # Attractive is dropped
    assert lab["2937"]["eyeglasses"] is True


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="needs --path"):
        items_from_spec("celeba", None, tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        items_from_spec("celeba", tmp_path / "nope", tmp_path)
    with pytest.raises(DatasetLayoutError, match="img_align_celeba/ or img_celeba"):
        list(items_from_spec("celeba", tmp_path, tmp_path))
    (tmp_path / "img_celeba").mkdir()
    with pytest.raises(DatasetLayoutError, match="neither list_attr_celeba.txt nor identity_CelebA.txt"):
        list(items_from_spec("celeba", tmp_path, tmp_path))
    with pytest.raises(DatasetLayoutError, match="no train/ or validation/"):
        list(items_from_spec("fer2013", tmp_path, tmp_path))
    with pytest.raises(DatasetLayoutError, match="holds none of"):
        list(items_from_spec("facedata", tmp_path / "img_celeba", tmp_path))
    with pytest.raises(DatasetLayoutError, match="fairface_label_train.csv"):
        list(items_from_spec("fairface", tmp_path, tmp_path))
    with pytest.raises(ValueError, match="unknown source"):
        items_from_spec("imagenet", tmp_path, tmp_path)
    with pytest.raises(DatasetLayoutError, match="offline"):
        list(items_from_spec("hf:someone/not-cached-here", None, tmp_path))


def test_row_labels_vocabulary():
    labs = {lb.name: lb.value for lb in row_labels({"age": "more than 70", "sex": "M", "emotion": "Happiness",
                                                    "hat": "yes", "race": "Black", "unrelated": "x"})}
    assert labs == {"age_range": [70.0, 100.0], "gender": "male", "expression": "happy", "wearing_hat": True,
                    "race": "Black"}
