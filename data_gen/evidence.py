"""The tools' measurements as record evidence: model labels (each naming its model), a compact FaceAnalysis
for the record, and an on-disk cache of full analyses keyed by the image file's sha256 (re-runs are cheap).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from facellm.tools.analyze import DEFAULT_STEPS
from facellm.tools.registry import position_words
from facellm.tools.schema import FaceAnalysis

from .schema import Label, estimate

ANALYSIS_STEPS = DEFAULT_STEPS  # everything but the identity descriptor (computed by the agent tools on demand)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary sibling and rename: a kill never leaves a half-written file under ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AnalysisCache:
    """Full FaceAnalysis (mesh included) per image sha256: ``folder/<sha256>.json``, written atomically."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.hits = self.misses = 0
        self.tool_ms = 0.0  # time the tools spent on the misses

    def get(self, path: str | os.PathLike, sha256: str | None = None,
            steps: tuple[str, ...] | list[str] | None = None) -> FaceAnalysis:
        """The cached analysis of the file, else the tools' (``steps``: default ``ANALYSIS_STEPS``)."""
        sha = sha256 or file_sha256(path)
        f = self.folder / f"{sha}.json"  # flat: the trainer reads OUT/cache/analysis/<sha256>.json too
        if f.is_file():
            try:
                fa = FaceAnalysis.from_json(f.read_bytes())
                self.hits += 1
                return fa
            except ValueError:
                pass  # a damaged cache entry is recomputed
        from facellm.tools.analyze import analyze

        t0 = time.perf_counter()
        fa = analyze(path, steps=tuple(steps) if steps else ANALYSIS_STEPS)
        self.tool_ms += (time.perf_counter() - t0) * 1000
        atomic_write(f, fa.to_json().encode())
        self.misses += 1
        return fa


def compact(fa: FaceAnalysis) -> FaceAnalysis:
    """The record's copy: no 478-point mesh, landmark groups, parse masks or embeddings (the full analysis
    stays in the cache; the region encoder recomputes what it needs from the image). Shallow copies of what
    is kept: a deep copy of the mesh only to drop it cost more than the rest of a record."""
    faces = []
    for f in fa.faces:
        parse = f.parse
        if parse is not None:
            parse = parse.model_copy(update={"rle": [], "regions": {k: r.model_copy(update={"polygons": []})
                                                                    for k, r in parse.regions.items()}})
        faces.append(f.model_copy(update={"mesh478": None, "groups": {}, "embedding": None, "embedding_source": None,
                                          "parse": parse}))
    return fa.model_copy(update={"faces": faces, "timings_ms": {},
                                 # the record's ImageRef holds the path; the cache's may be another run's folder
                                 "image": fa.image.model_copy(update={"path": None})})


def model_labels(fa: FaceAnalysis) -> list[Label]:
    """Everything the tools measured, as model-estimate labels naming their model."""
    det = fa.faces[0].detector if fa.faces else "mediapipe-blazeface-full-range"
    out = [estimate("num_faces", fa.num_faces, det)]
    for f in fa.faces:
        i = f.id
        out.append(estimate("position", position_words(f, fa.image.width, fa.image.height), f.detector, face_id=i))
        if f.pose is not None:
            p = f.pose
            out += [estimate("head_pose", p.direction, p.source, face_id=i),
                    estimate("yaw", round(p.yaw, 1), p.source, face_id=i),
                    estimate("pitch", round(p.pitch, 1), p.source, face_id=i),
                    estimate("roll", round(p.roll, 1), p.source, face_id=i)]
        if f.cues is not None:
            c = f.cues
            for name in ("smile", "mouth_open", "brow_raise"):
                cue = getattr(c, name)
                out.append(estimate(name, cue.active, c.source, probability=min(1.0, max(0.0, cue.score)), face_id=i))
            both = c.right_eye_closed.active and c.left_eye_closed.active
            neither = not (c.right_eye_closed.active or c.left_eye_closed.active)
            if both or neither:  # one eye closed (a wink or a turned head) is left unsaid
                out.append(estimate("eyes_closed", both, c.source, face_id=i))
            out.append(estimate("gaze", c.gaze_direction, c.source, face_id=i))
        if f.expression is not None:
            e = f.expression
            out.append(estimate("expression", e.value, e.source, probability=e.probability, face_id=i))
        a = f.attributes
        if a is not None and a.perceived_age is not None:
            ag = a.perceived_age
            out += [estimate("perceived_age", round(ag.value, 1), ag.source, face_id=i),
                    estimate("perceived_age_range", [round(ag.low), round(ag.high)], ag.source,
                             probability=ag.probability, face_id=i)]
        if a is not None and a.perceived_gender is not None:
            g = a.perceived_gender
            out.append(estimate("perceived_gender", g.value, g.source, probability=g.probability, face_id=i))
        if f.quality is not None:
            q = f.quality
            src = "facellm quality (mesh + image statistics)"
            out += [estimate("quality_usable", q.usable, src, face_id=i),
                    estimate("quality_score", round(q.score, 2), src, face_id=i),
                    estimate("sharpness", round(q.blur, 2), src, face_id=i),
                    estimate("exposure", round(q.exposure, 2), src, face_id=i),
                    estimate("inter_ocular_px", round(q.face_size, 1), src, face_id=i)]
            if q.reasons:
                out.append(estimate("quality_reasons", "; ".join(q.reasons), src, face_id=i))
        if f.parse is not None:
            out.append(estimate("hair_visible", f.parse.regions.get("hair") is not None
                                and f.parse.regions["hair"].area > 0, f.parse.source, face_id=i))
    return out


def assign_face_ids(fa: FaceAnalysis, anchored: list[tuple[tuple[float, float] | None, Label]]) -> list[Label]:
    """Attach labels given for a point (a face centre) to the detected face whose box holds it; labels with
    no point go to the largest face. A label whose face was not detected is dropped (never guessed)."""
    out = []
    for point, label in anchored:
        if not fa.faces:
            continue
        if point is None:  # the main face: the largest, ties broken by closeness to the image centre
            cx, cy = fa.image.width / 2, fa.image.height / 2
            face = max(fa.faces, key=lambda f: (round(f.box.area),
                                                -((f.box.center[0] - cx) ** 2 + (f.box.center[1] - cy) ** 2)))
        else:
            x, y = point
            inside = [f for f in fa.faces if f.box.x1 <= x <= f.box.x2 and f.box.y1 <= y <= f.box.y2]
            if not inside:
                continue
            face = min(inside, key=lambda f: (f.box.center[0] - x) ** 2 + (f.box.center[1] - y) ** 2)
        out.append(label.model_copy(update={"face_id": face.id}))
    return out


def labels_json(labels: list[Label]) -> str:
    return json.dumps([lb.model_dump() for lb in labels], ensure_ascii=False)


# what an occlusion patch over a region makes unreadable for the models (the mesh still "sees" a mouth under
# a patch and the cues would report on it)
HIDDEN_BY = {"mouth": {"smile", "mouth_open", "expression"},
             "eyes": {"eyes_closed", "gaze", "brow_raise", "expression"}}


def drop_hidden(labels: list[Label], fa: FaceAnalysis, occluded: list[dict]) -> list[Label]:
    """Model labels of a face whose region a known occlusion patch covers are dropped, not stated."""
    hidden: dict[int, set[str]] = {}
    for occ in occluded:
        x1, y1, x2, y2 = occ["box"]
        for f in fa.faces:
            b = f.box
            if min(b.x2, x2) > max(b.x1, x1) and min(b.y2, y2) > max(b.y1, y1):
                hidden.setdefault(f.id, set()).update(HIDDEN_BY.get(occ["region"], set()))
    return [lb for lb in labels
            if not (lb.kind == "model" and lb.face_id in hidden and lb.name in hidden[lb.face_id])]
