"""Small local copies of face datasets in their real file layouts, built from the real photos that ship in
packages (not a test module itself). Each builder writes into a folder and returns what it wrote.

The photos are cropped around their faces at each dataset's image size, as the datasets distribute aligned or
loosely cropped faces: FairFace 224 x 224 (padding 0.25), UTKFace 200 x 200, CelebA aligned 178 x 218, RAF-DB
aligned 100 x 100. Labels are what a person sees in these photos (tests/fixtures/photos.json).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from facellm.tools.analyze import analyze
from facellm.tools.photos import photo

CELEBA_ATTRS = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
                "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair "
                "Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face "
                "Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair "
                "Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


@lru_cache(maxsize=None)
def _box(name: str, index: int = 0) -> tuple[float, float, float, float]:
    fa = analyze(photo(name), steps=())
    b = fa.faces[index].box
    return b.x1, b.y1, b.x2, b.y2


def face_crop(name: str, size: tuple[int, int], scale: float = 1.8, *, mirror: bool = False,
              index: int = 0) -> Image.Image:
    """The photo's face ``index`` (left to right), cropped ``scale`` x its box and resized to ``size``."""
    img = ImageOps.exif_transpose(Image.open(photo(name))).convert("RGB")
    x1, y1, x2, y2 = _box(name, index)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = size
    half_w = (x2 - x1) * scale / 2
    half_h = half_w * h / w
    crop = img.crop((round(cx - half_w), round(cy - half_h * 0.95), round(cx + half_w), round(cy + half_h * 1.05)))
    crop = crop.resize(size, Image.BICUBIC)
    return ImageOps.mirror(crop) if mirror else crop


def _save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95)
    return path


def fairface(root: Path) -> Path:
    """fairface_label_{train,val}.csv (file,age,gender,race,service_test) + train/ and val/ images."""
    rows = {"train": [("train/1.jpg", "astronaut", False, "30-39", "Female", "White"),
                      ("train/2.jpg", "grace_hopper", False, "more than 70", "Female", "White"),
                      ("train/3.jpg", "astronaut", True, "30-39", "Female", "White")],
            "val": [("val/1.jpg", "camera", False, "20-29", "Male", "White")]}
    for split, items in rows.items():
        lines = ["file,age,gender,race,service_test"]
        for file, name, mirror, age, gender, race in items:
            _save(face_crop(name, (224, 224), 2.0, mirror=mirror), root / file)
            lines.append(f"{file},{age},{gender},{race},True")
        (root / f"fairface_label_{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def utkface(root: Path) -> Path:
    """UTKFace/{age}_{gender}_{race}_{datetime}.jpg.chip.jpg, plus one file missing a field (as in the real set)."""
    d = root / "UTKFace"
    _save(face_crop("astronaut", (200, 200), 1.6), d / "35_1_0_20170109142408075.jpg.chip.jpg")
    _save(face_crop("grace_hopper", (200, 200), 1.6), d / "79_1_0_20170120225751953.jpg.chip.jpg")
    _save(face_crop("camera", (200, 200), 1.6), d / "24_0_4_20170117200930584.jpg.chip.jpg")  # race 4: Others
    _save(face_crop("astronaut", (200, 200), 1.7, mirror=True), d / "39_1_20170116174525125.jpg.chip.jpg")
    return root


def celeba(root: Path) -> Path:
    """img_align_celeba/ + list_attr_celeba.txt, identity_CelebA.txt, list_eval_partition.txt (real formats)."""
    imgs = [("000001.jpg", "astronaut", False, "2880", "0", {"Smiling", "Mouth_Slightly_Open", "No_Beard", "Young",
                                                             "Brown_Hair"}),
            ("000002.jpg", "grace_hopper", False, "2937", "2", {"Eyeglasses", "Wearing_Hat", "No_Beard", "Gray_Hair"}),
            ("000003.jpg", "astronaut", True, "2880", "0", {"Smiling", "Mouth_Slightly_Open", "No_Beard", "Young"}),
            ("000004.jpg", "tom_hanks", False, "8692", "1", {"Male", "Smiling"})]
    attr = [str(len(imgs)), " ".join(CELEBA_ATTRS)]
    ident, part = [], []
    for file, name, mirror, person, split, on in imgs:
        _save(face_crop(name, (178, 218), 1.7, mirror=mirror), root / "img_align_celeba" / file)
        # the real file pads the values to two columns: "000001.jpg -1  1  1 -1 ..."
        attr.append(file + " " + " ".join(f"{1 if a in on else -1:>2}" for a in CELEBA_ATTRS))
        ident.append(f"{file} {person}")
        part.append(f"{file} {split}")
    (root / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
    (root / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return root


def rafdb(root: Path) -> Path:
    """basic/EmotionLabel/list_patition_label.txt (1 Surprise ... 4 Happiness ... 7 Neutral) + Image/aligned."""
    b = root / "basic"
    items = [("train_00001.jpg", "astronaut", 4), ("train_00002.jpg", "grace_hopper", 7),
             ("test_0001.jpg", "camera", 7)]
    for file, name, cls in items:
        _save(face_crop(name, (100, 100), 1.5), b / "Image" / "aligned" / file.replace(".jpg", "_aligned.jpg"))
    (b / "EmotionLabel").mkdir(parents=True, exist_ok=True)
    (b / "EmotionLabel" / "list_patition_label.txt").write_text(
        "\n".join(f"{f} {c}" for f, _, c in items) + "\n")
    return root


def expression_folders(root: Path) -> Path:
    """The class-folder layout of RAF-DB / FER-style mirrors: train/happy/x.jpg, test/neutral/y.jpg."""
    _save(face_crop("astronaut", (100, 100), 1.5), root / "train" / "happy" / "a.jpg")
    _save(face_crop("grace_hopper", (100, 100), 1.5), root / "test" / "neutral" / "b.jpg")
    return root


def affectnet(root: Path) -> Path:
    """train_set/images/N.jpg + train_set/annotations/N_exp.npy, N_val.npy, N_aro.npy (AffectNet's release)."""
    for i, (name, exp, val, aro) in enumerate([("astronaut", 1, 0.72, 0.31), ("grace_hopper", 0, 0.05, -0.1)]):
        _save(face_crop(name, (224, 224), 1.8), root / "train_set" / "images" / f"{i}.jpg")
        ann = root / "train_set" / "annotations"
        ann.mkdir(parents=True, exist_ok=True)
        np.save(ann / f"{i}_exp.npy", np.array(str(exp)))  # AffectNet stores the class as a numpy string
        np.save(ann / f"{i}_val.npy", np.array(str(val)))
        np.save(ann / f"{i}_aro.npy", np.array(str(aro)))
    return root


def table_csv(root: Path) -> Path:
    """A generic labels.csv + images/ folder, with columns that need --columns renames."""
    _save(face_crop("astronaut", (160, 160), 1.8), root / "images" / "p1.jpg")
    _save(face_crop("grace_hopper", (160, 160), 1.8), root / "images" / "p2.jpg")
    (root / "labels.csv").write_text("image,Age,Sex,emotion,glasses,person_id,split\n"
                                     "images/p1.jpg,42,F,happy,0,A,train\n"
                                     "images/p2.jpg,79,F,neutral,1,B,test\n"
                                     "images/missing.jpg,30,M,sad,0,C,train\n")
    return root


def table_jsonl(root: Path) -> Path:
    _save(face_crop("camera", (160, 160), 1.8), root / "imgs" / "c.png")
    (root / "meta.jsonl").write_text(json.dumps({"file_name": "imgs/c.png", "age": "20-29", "gender": "male",
                                                 "smiling": False}) + "\n")
    return root


def hf_saved(root: Path) -> Path:
    """A DatasetDict saved with save_to_disk: Image column, ClassLabel age/gender/race (FairFace on the hub)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as HFImage, Value

    feats = Features({"image": HFImage(), "age": ClassLabel(names=["0-2", "3-9", "10-19", "20-29", "30-39", "40-49",
                                                                   "50-59", "60-69", "more than 70"]),
                      "gender": ClassLabel(names=["Male", "Female"]),
                      "race": ClassLabel(names=["East Asian", "Indian", "Black", "White", "Middle Eastern",
                                                "Latino_Hispanic", "Southeast Asian"]),
                      "service_test": Value("bool")})
    tmp = root / "_src"
    a = _save(face_crop("astronaut", (224, 224), 2.0), tmp / "a.jpg")
    g = _save(face_crop("grace_hopper", (224, 224), 2.0), tmp / "g.jpg")
    c = _save(face_crop("camera", (224, 224), 2.0), tmp / "c.jpg")
    train = Dataset.from_dict({"image": [str(a), str(g)], "age": [4, 8], "gender": [1, 1], "race": [3, 3],
                               "service_test": [True, False]}, features=feats)
    val = Dataset.from_dict({"image": [str(c)], "age": [3], "gender": [0], "race": [3], "service_test": [True]},
                            features=feats)
    out = root / "fairface_hf"
    DatasetDict({"train": train, "validation": val}).save_to_disk(str(out))
    return out


def hf_imagefolder(root: Path) -> Path:
    """The `imagefolder` layout `load_dataset(path)` reads: images + metadata.csv (file_name + CelebA columns)."""
    d = root / "celeba_imagefolder" / "train"
    _save(face_crop("astronaut", (178, 218), 1.7), d / "000001.jpg")
    _save(face_crop("grace_hopper", (178, 218), 1.7), d / "000002.jpg")
    (d / "metadata.csv").write_text("file_name,celeb_id,Smiling,Eyeglasses,Male,Attractive\n"
                                    "000001.jpg,2880,True,False,False,True\n"
                                    "000002.jpg,2937,False,True,False,False\n")
    return root / "celeba_imagefolder"


# ------------------------------------------------------------------ shipped copies in the real layouts
# tests/fixtures/datasets/ holds tiny copies of the three real datasets' layouts (as in ../shared/data), built once
# by ``build_shipped`` from the packaged photos and committed (~100 KB), so the adapters are tested on files in the
# published layouts without the datasets themselves.
SHIPPED = Path(__file__).parent / "fixtures" / "datasets"
SHIPPED_CELEBA_IDENTITIES = {"000001.jpg": "101", "000002.jpg": "101", "000003.jpg": "202", "000004.jpg": "202",
                             "000005.jpg": "303", "000006.jpg": "404"}


def _group_face(index: int, size: tuple[int, int], scale: float = 1.8) -> Image.Image:
    return face_crop("group", size, scale, index=index)


def build_shipped(root: Path = SHIPPED) -> Path:
    # UTKFace crop_part1: AGE_GENDER_RACE_DATETIME.jpg.chip.jpg, 200x200, tight crops; two names lack a field
    utk = root / "utkface" / "crop_part1"
    for name, img in [("35_1_0_20170109142408075.jpg.chip.jpg", face_crop("astronaut", (200, 200), 1.25)),
                      ("79_1_0_20170120225751953.jpg.chip.jpg", face_crop("grace_hopper", (200, 200), 1.25)),
                      ("24_0_4_20170117200930584.jpg.chip.jpg", face_crop("camera", (200, 200), 1.25)),
                      ("30_0_1_20170117190315172.jpg.chip.jpg", _group_face(2, (200, 200), 1.25)),
                      ("61_1_20170109142408075.jpg.chip.jpg", face_crop("astronaut", (200, 200), 1.3, mirror=True)),
                      ("61_3_20170109150557335.jpg.chip.jpg", face_crop("camera", (200, 200), 1.3, mirror=True))]:
        utk.mkdir(parents=True, exist_ok=True)
        img.save(utk / name, quality=80)
    # FER2013 class folders: 48x48 greyscale JPEG, train/ and validation/ (the public test half)
    fer = root / "fer2013"
    for rel, img in [("train/happy/Training_10000001.jpg", face_crop("astronaut", (48, 48), 1.2)),
                     ("train/happy/Training_10000002.jpg", _group_face(5, (48, 48), 1.2)),
                     ("train/neutral/Training_10000003.jpg", face_crop("camera", (48, 48), 1.2)),
                     ("validation/happy/PublicTest_10000004.jpg", _group_face(3, (48, 48), 1.2)),
                     ("validation/neutral/PublicTest_10000005.jpg", _group_face(4, (48, 48), 1.2))]:
        (fer / rel).parent.mkdir(parents=True, exist_ok=True)
        ImageOps.grayscale(img).save(fer / rel, quality=90)
    # CelebA identities only (no list_attr_celeba.txt), in-the-wild img_celeba photos up to 400 px; 000001 shows
    # three people, its identity is the main (largest) face's
    cel = root / "celeba"
    (cel / "img_celeba").mkdir(parents=True, exist_ok=True)
    (cel / "Anno").mkdir(parents=True, exist_ok=True)
    group = ImageOps.exif_transpose(Image.open(photo("group"))).convert("RGB")
    wild = group.crop((430, 30, 1060, 500))
    wild.thumbnail((400, 400))
    wild.save(cel / "img_celeba" / "000001.jpg", quality=80)
    _group_face(4, (150, 180), 2.4).save(cel / "img_celeba" / "000002.jpg", quality=80)
    for name, img in [("000003.jpg", face_crop("astronaut", (220, 260), 2.6)),
                      ("000004.jpg", face_crop("astronaut", (200, 240), 2.2, mirror=True)),
                      ("000005.jpg", face_crop("grace_hopper", (220, 260), 2.4)),
                      ("000006.jpg", face_crop("tom_hanks", (112, 112), 1.4))]:
        img.save(cel / "img_celeba" / name, quality=80)
    lines = [f"{k} {v}" for k, v in SHIPPED_CELEBA_IDENTITIES.items()] + ["000099.jpg 505"]  # a subset: not all here
    (cel / "Anno" / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return root


if __name__ == "__main__":
    print(build_shipped())
