"""analyze(image): the whole tool chain once — one decode, one detection, shared crops — into a FaceAnalysis.

Each step is also usable on its own (see the modules it calls). Steps a caller leaves out are skipped along
with nothing else, and steps pull in what they need (``pose`` needs the mesh, ``cues`` needs pose, ...).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager

from .detector import DEFAULT_BACKEND, detect
from .image_io import ImageInput, LoadedImage, as_loaded
from .schema import Face, FaceAnalysis

# In dependency order. "embedding" (the 128-d identity descriptor, ~60-90 ms a face) is not in the default
# set: identity work asks for it explicitly.
ALL_STEPS = ("mesh", "landmarks68", "parse", "pose", "cues", "attributes", "expression", "quality", "embedding")
DEFAULT_STEPS = tuple(s for s in ALL_STEPS if s != "embedding")
_NEEDS = {
    "parse": {"mesh"},
    "pose": {"mesh"},
    "cues": {"mesh", "pose", "landmarks68"},  # the 68 points give the closed-eye cues
    "quality": {"mesh", "pose"},
}


def resolve_steps(steps: Iterable[str] | None) -> tuple[str, ...]:
    wanted = set(DEFAULT_STEPS if steps is None else steps)
    unknown = wanted - set(ALL_STEPS)
    if unknown:
        raise ValueError(f"unknown analysis step(s) {sorted(unknown)}; known: {list(ALL_STEPS)}")
    for s in list(wanted):
        wanted |= _NEEDS.get(s, set())
    return tuple(s for s in ALL_STEPS if s in wanted)


class Analyzer:
    """Holds the loaded models; reuse one instance (``get_analyzer()``) across images."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, object] = {}

    def _part(self, name: str):
        # Built on first use so that, e.g., `facellm tools detect` never loads the age model.
        with self._lock:
            if name not in self._parts:
                if name == "mesher":
                    from .mesh import FaceMesher

                    self._parts[name] = FaceMesher()
                elif name == "lmk68":
                    from .dlib_backend import Dlib68Landmarker

                    self._parts[name] = Dlib68Landmarker()
                elif name == "parser":
                    from .parser import FaceParser

                    self._parts[name] = FaceParser()
                elif name == "attributes":
                    from .attributes import AttributeEstimator

                    self._parts[name] = AttributeEstimator()
                elif name == "expression":
                    from .expression import ExpressionClassifier

                    self._parts[name] = ExpressionClassifier()
                elif name == "recognizer":
                    from .recognizer import FaceRecognizer

                    self._parts[name] = FaceRecognizer()
                else:
                    raise KeyError(name)
            return self._parts[name]

    def analyze(
        self,
        image: ImageInput | LoadedImage,
        *,
        steps: Iterable[str] | None = None,
        detector: str = DEFAULT_BACKEND,
        min_score: float | None = None,
        max_faces: int | None = None,
    ) -> FaceAnalysis:
        timings: dict[str, float] = {}

        @contextmanager
        def timed(key: str):
            t0 = time.perf_counter()
            yield
            timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0) * 1000

        with timed("decode"):
            img = as_loaded(image)
        rgb = img.rgb
        todo = resolve_steps(steps)
        warnings: list[str] = []
        with timed("detect"):
            dets = detect(img, backend=detector, min_score=min_score)
        if max_faces is not None and len(dets) > max_faces:
            # keep the most confident faces, then restore the left-to-right order
            keep = sorted(sorted(range(len(dets)), key=lambda i: -dets[i].score)[:max_faces])
            warnings.append(f"{len(dets)} faces found; analysed the {max_faces} most confident")
            dets = [dets[i] for i in keep]
        faces = [
            Face(id=i + 1, box=d.box, score=d.score, kpts5=list(d.kpts5), detector=d.source)
            for i, d in enumerate(dets)
        ]
        if faces and "mesh" in todo:
            from .landmark_groups import groups, kpts5_from

            mesher = self._part("mesher")
            with timed("mesh"):
                meshes = mesher.mesh_all(rgb, dets)
            for f, m in zip(faces, meshes):
                f.mesh478 = m
                if m is not None:
                    f.kpts5 = kpts5_from(m)  # exact mouth corners, replacing the detector's estimate
                    f.groups = groups(m)
        if faces and "landmarks68" in todo:
            lm = self._part("lmk68")
            with timed("landmarks68"):
                for f in faces:
                    f.lmk68 = lm.landmarks(rgb, f.box)
                    if f.mesh478 is None:
                        from .landmark_groups import groups

                        f.groups = groups(f.lmk68)
        if faces and "parse" in todo:
            parser = self._part("parser")
            with timed("parse"):
                parses = parser.parse_all(rgb, [f.mesh478 for f in faces], [f.box for f in faces])
            for f, p in zip(faces, parses):
                f.parse = p
        if faces and "pose" in todo:
            from .pose import estimate_pose

            with timed("pose"):
                for f in faces:
                    lm = f.mesh478 or f.lmk68
                    if lm is not None:
                        f.pose = estimate_pose(lm, (img.width, img.height))
        if faces and "cues" in todo:
            from .cues import expression_cues

            with timed("cues"):
                for f in faces:
                    lm = f.mesh478 or f.lmk68
                    if lm is not None:
                        f.cues = expression_cues(lm, f.pose, lids=f.lmk68)  # dlib's lids see closed eyes
        if faces and "attributes" in todo:
            est = self._part("attributes")
            with timed("attributes"):
                for f, a in zip(faces, est.estimate_all(rgb, [f.box for f in faces], [f.kpts5 for f in faces])):
                    f.attributes = a
        if faces and "expression" in todo:
            clf = self._part("expression")
            with timed("expression"):
                for f, e in zip(faces, clf.classify_all(rgb, [f.box for f in faces], [f.kpts5 for f in faces])):
                    f.expression = e
        if faces and "quality" in todo:
            from .quality import assess_quality

            with timed("quality"):
                for f in faces:
                    f.quality = assess_quality(rgb, f.box, f.mesh478 or f.lmk68, f.pose, f.parse)
        if faces and "embedding" in todo:
            rec = self._part("recognizer")
            with timed("embedding"):
                for f, d in zip(faces, dets):
                    f.embedding = [round(float(v), 6) for v in rec.embed(img, d)]
                    f.embedding_source = rec.source
        timings["total"] = sum(v for k, v in timings.items())
        return FaceAnalysis(
            image=img.info, faces=faces, timings_ms={k: round(v, 2) for k, v in timings.items()}, warnings=warnings
        )


_default: Analyzer | None = None
_default_lock = threading.Lock()


def get_analyzer() -> Analyzer:
    global _default
    with _default_lock:
        if _default is None:
            _default = Analyzer()
        return _default


def analyze(image: ImageInput | LoadedImage, **kwargs) -> FaceAnalysis:
    """Run the tool chain on one image with the shared analyzer. See ``Analyzer.analyze``."""
    return get_analyzer().analyze(image, **kwargs)
