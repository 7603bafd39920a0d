"""The face tools, named and described once.

Everything that exposes the tools derives from ``REGISTRY``: the OpenAI ``tools`` JSON schema
(``openai_tools()``), the agent's LangChain tools (one per ``ToolSpec``: name, description, ``args_model``,
``run``), the server's tool list and data_gen's agent traces.

Images are passed by reference: an id such as ``"image_1"`` that an ``ImageStore`` maps to a path, bytes
or a decoded image. The store also caches each image's ``FaceAnalysis`` so a second tool call on the same
image (or a follow-up question) reuses the first one's work, and so face ids stay the same across calls.

Results are compact JSON-able dicts derived from ``FaceAnalysis``: summarised values with probabilities
and sources, never raw 478-point meshes. Model outputs carry ``"kind": "model estimate"``; perceived age
and gender are named ``perceived_*``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .analyze import DEFAULT_STEPS, resolve_steps
from .image_io import ImageInput, LoadedImage, as_loaded
from .schema import Face, FaceAnalysis

ESTIMATE = "model estimate"


class ToolError(ValueError):
    """A tool call could not be carried out; the message says why in plain words (fed back to the model)."""


# ------------------------------------------------------------------ the image store


class ImageStore:
    """Images of one conversation by id ("image_1", "image_2", ...), each decoded and analysed at most once.

    ``gallery``: a ``Gallery`` (or a path to its SQLite file) for the ``identify`` tool.
    ``analyses``: precomputed ``FaceAnalysis`` per id (data_gen passes its cached ones), taken to cover the
    default analysis steps.
    """

    def __init__(self, images: Mapping[str, ImageInput | LoadedImage] | None = None, *, gallery: Any = None,
                 analyses: Mapping[str, FaceAnalysis] | None = None) -> None:
        self._sources: dict[str, ImageInput | LoadedImage] = {}
        self._loaded: dict[str, LoadedImage] = {}
        self._analyses: dict[str, tuple[frozenset[str], FaceAnalysis]] = {}
        self._lock = threading.RLock()
        self._gallery = gallery
        for image_id, image in (images or {}).items():
            self.add(image, image_id)
        for image_id, fa in (analyses or {}).items():
            if image_id not in self._sources:
                raise ToolError(f"an analysis was given for {image_id!r}, which is not in the store")
            steps = set(DEFAULT_STEPS) | ({"embedding"} if fa.faces and all(f.embedding for f in fa.faces) else set())
            self._analyses[image_id] = (frozenset(steps), fa)

    def add(self, image: ImageInput | LoadedImage, image_id: str | None = None) -> str:
        """Register an image; returns its id (the next ``image_N`` unless one is given)."""
        with self._lock:
            if image_id is None:
                n = len(self._sources) + 1
                while f"image_{n}" in self._sources:
                    n += 1
                image_id = f"image_{n}"
            self._sources[image_id] = image
            self._loaded.pop(image_id, None)
            self._analyses.pop(image_id, None)
            return image_id

    @property
    def ids(self) -> list[str]:
        return list(self._sources)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._sources

    def loaded(self, image_id: str) -> LoadedImage:
        with self._lock:
            if image_id not in self._sources:
                known = ", ".join(self._sources) or "none"
                raise ToolError(f"unknown image {image_id!r}; the images in this conversation are: {known}")
            if image_id not in self._loaded:
                self._loaded[image_id] = as_loaded(self._sources[image_id])
            return self._loaded[image_id]

    def analysis(self, image_id: str, steps: Iterable[str] = DEFAULT_STEPS) -> FaceAnalysis:
        """The image's FaceAnalysis with at least ``steps`` done (cached; re-run with the union if not)."""
        wanted = frozenset(resolve_steps(steps))
        with self._lock:
            done, fa = self._analyses.get(image_id, (frozenset(), None))
            if fa is not None and wanted <= done:
                return fa
            from .analyze import analyze

            union = done | wanted
            fa = analyze(self.loaded(image_id), steps=union)
            self._analyses[image_id] = (union, fa)
            return fa

    @property
    def gallery(self):
        if self._gallery is None:
            raise ToolError("no face gallery is configured, so nobody can be identified")
        if not hasattr(self._gallery, "identify"):
            from .gallery import Gallery

            self._gallery = Gallery(self._gallery)
        return self._gallery


# ------------------------------------------------------------------ argument models


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


ImageId = Field(description='id of an image in the conversation, e.g. "image_1"', min_length=1, max_length=64)
FaceId = Field(default=None, ge=1, description="face number (1 = leftmost face); omit for every face")
Position = Literal["left", "right", "centre", "top", "bottom", "top left", "top right", "bottom left", "bottom right",
                   "largest", "smallest"]
PositionArg = Field(default=None, description="pick one face by where it is (instead of face_id)")


class DetectArgs(_Args):
    image: str = ImageId
    min_score: float | None = Field(default=None, ge=0.0, le=1.0, description="detector score threshold")


class FaceArgs(_Args):
    image: str = ImageId
    face_id: int | None = FaceId
    position: Position | None = PositionArg


class RankArgs(_Args):
    image: str = ImageId
    by: Literal["age", "smile", "eyes_open", "face_size", "looking_at_camera"] = Field(
        description="what to order the faces by, highest first")


class ImageArgs(_Args):
    image: str = ImageId


class VerifyArgs(_Args):
    image_a: str = Field(description="id of the first image", min_length=1, max_length=64)
    image_b: str = Field(description="id of the second image (may equal image_a to compare two faces in it)",
                         min_length=1, max_length=64)
    face_a: int | None = Field(default=None, ge=1, description="face number in image_a (1 = leftmost); default: "
                               "the main face (the largest; of about equally large ones, the most central)")
    face_b: int | None = Field(default=None, ge=1, description="face number in image_b (1 = leftmost); default: "
                               "the main face (the largest; of about equally large ones, the most central)")


class IdentifyArgs(_Args):
    image: str = ImageId
    face_id: int | None = FaceId
    position: Position | None = PositionArg
    top_k: int = Field(default=1, ge=1, le=5, description="how many nearest enrolled people to list")


# ------------------------------------------------------------------ summaries of FaceAnalysis


def _r(x: float, nd: int = 2) -> float:
    return round(float(x), nd)


_ORDINAL_WORDS = ("second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def position_words(face: Face, width: int, height: int, faces: Sequence[Face] | None = None) -> str:
    """Where the face is, in plain words, the one wording the tools, the agent and the CLI show.

    Alone (or without ``faces``): by thirds of the frame ("top left", "centre"). Among several ``faces``: by its
    place from the left, so no two faces of a photo share a word (thirds named two faces "centre"): "left" is the
    leftmost face (as the agent's "on the left" and ``position="left"`` mean), "right" the rightmost, "centre" the
    middle one of an odd count, the others "second from the left", "third from the right", ...
    """
    others = [f for f in (faces or ()) if f.id != face.id]
    if not others:
        cx, cy = face.box.center
        h = "left" if cx < width / 3 else ("right" if cx > 2 * width / 3 else "centre")
        v = "top" if cy < height / 3 else ("bottom" if cy > 2 * height / 3 else "middle")
        return h if v == "middle" else f"{v} {h}" if h != "centre" else v
    row = sorted([face, *others], key=lambda f: (f.box.center[0], f.id))
    i, n = row.index(face), len(row)
    from_right = n - 1 - i
    if i == 0:
        return "left"
    if from_right == 0:
        return "right"
    if i == from_right:
        return "centre"
    k, side = (i, "left") if i < from_right else (from_right, "right")
    word = _ORDINAL_WORDS[k - 1] if k <= len(_ORDINAL_WORDS) else f"{k + 1}th"
    return f"{word} from the {side}"


def age_range_words(low: float, high: float) -> str | None:
    """The age model's likely range as text ("27-32 years"), or None when it is a single year (the model put
    most of its weight on one age): "range 28-28 years" reads as a bug."""
    lo, hi = round(low), round(high)
    return f"{lo}-{hi} years" if hi > lo else None


def face_base(face: Face, fa: FaceAnalysis) -> dict:
    b = face.box
    return {"face_id": face.id, "box": [round(b.x1), round(b.y1), round(b.x2), round(b.y2)],
            "position": position_words(face, fa.image.width, fa.image.height, fa.faces),
            "detector_score": _r(face.score)}


def pose_summary(face: Face) -> dict | None:
    p = face.pose
    if p is None:
        return None
    return {"yaw": _r(p.yaw, 1), "pitch": _r(p.pitch, 1), "roll": _r(p.roll, 1), "direction": p.direction,
            "source": p.source, "kind": ESTIMATE}


def expression_summary(face: Face) -> dict:
    out: dict[str, Any] = {}
    e = face.expression
    if e is not None:
        top = sorted(e.probabilities.items(), key=lambda kv: -kv[1])[:3]
        out["expression"] = {"value": e.value, "probability": _r(e.probability),
                             "top3": {k: _r(v) for k, v in top}, "source": e.source, "kind": ESTIMATE}
    c = face.cues
    if c is not None:
        out["cues"] = {name: {"active": getattr(c, name).active, "score": _r(getattr(c, name).score)}
                       for name in ("smile", "mouth_open", "right_eye_closed", "left_eye_closed", "brow_raise")}
        out["cues"]["gaze"] = c.gaze_direction
        out["cues"]["source"] = c.source
        out["cues"]["kind"] = ESTIMATE
    return out


def attributes_summary(face: Face) -> dict:
    out: dict[str, Any] = {}
    a = face.attributes
    if a is not None and a.perceived_age is not None:
        ag = a.perceived_age
        out["perceived_age"] = {"value": round(ag.value), "range": [round(ag.low), round(ag.high)],
                                "probability": _r(ag.probability), "source": ag.source, "kind": ESTIMATE}
    if a is not None and a.perceived_gender is not None:
        g = a.perceived_gender
        out["perceived_gender"] = {"value": g.value, "probability": _r(g.probability), "source": g.source,
                                   "kind": ESTIMATE}
    return out


def quality_summary(face: Face) -> dict | None:
    q = face.quality
    if q is None:
        return None
    return {"score": _r(q.score), "usable": q.usable, "reasons": q.reasons, "blur": _r(q.blur),
            "exposure": _r(q.exposure), "inter_ocular_px": round(q.face_size, 1),
            "occlusion": _r(q.occlusion), "pose_extremity": _r(q.pose_extremity)}


def parse_summary(face: Face) -> dict | None:
    p = face.parse
    if p is None:
        return None
    total = sum(r.area for r in p.regions.values()) or 1
    shares = {k: round(100.0 * r.area / total, 1) for k, r in p.regions.items() if r.area > 0}
    absent = [k for k, r in p.regions.items() if r.area == 0]
    return {"region_share_percent": shares, "absent": absent, "source": p.source}


_KPT_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner")


def landmarks_summary(face: Face) -> dict:
    pts = {n: [round(x, 1), round(y, 1)] for n, (x, y) in zip(_KPT_NAMES, face.kpts5)}
    (rx, ry), (lx, ly) = face.kpts5[0], face.kpts5[1]
    schemes = {lm.scheme: lm.source for lm in (face.mesh478, face.lmk68) if lm is not None}
    return {"kpts5": pts, "inter_ocular_px": round(((rx - lx) ** 2 + (ry - ly) ** 2) ** 0.5, 1),
            "schemes": schemes, "groups": sorted(face.groups)}


# ------------------------------------------------------------------ runners


def _by_position(fa: FaceAnalysis, position: str) -> Face:
    """The one face that best fits a place in the frame (image coordinates, x right, y down)."""
    w, h = max(fa.image.width, 1), max(fa.image.height, 1)

    def xy(f: Face) -> tuple[float, float]:
        cx, cy = f.box.center
        return cx / w, cy / h

    def corner(f: Face, x: float, y: float) -> float:
        fx, fy = xy(f)
        return (fx - x) ** 2 + (fy - y) ** 2

    key = {"left": lambda f: xy(f)[0], "right": lambda f: -xy(f)[0], "top": lambda f: xy(f)[1],
           "bottom": lambda f: -xy(f)[1], "centre": lambda f: abs(xy(f)[0] - 0.5) + abs(xy(f)[1] - 0.5),
           # corners: the face nearest that corner of the frame
           "top left": lambda f: corner(f, 0, 0), "top right": lambda f: corner(f, 1, 0),
           "bottom left": lambda f: corner(f, 0, 1), "bottom right": lambda f: corner(f, 1, 1),
           "largest": lambda f: -f.box.area, "smallest": lambda f: f.box.area}[position]
    return min(fa.faces, key=key)


def _faces(fa: FaceAnalysis, face_id: int | None, position: str | None = None) -> list[Face]:
    if face_id is not None and position is not None:
        raise ToolError("give either face_id or position, not both")
    if position is not None:
        if not fa.faces:
            raise ToolError("no face was found in this image")
        return [_by_position(fa, position)]
    if face_id is None:
        return list(fa.faces)
    if not fa.faces:
        raise ToolError("no face was found in this image")
    try:
        return [fa.face(face_id)]
    except KeyError:
        raise ToolError(f"there is no face {face_id}: this image has {fa.num_faces} face(s), numbered "
                        f"1..{fa.num_faces} from left to right") from None


def _per_face(steps: tuple[str, ...], summarise: Callable[[Face], dict | None], key: str | None = None):
    def run(args: FaceArgs, store: ImageStore) -> dict:
        fa = store.analysis(args.image, steps)
        faces = []
        for f in _faces(fa, args.face_id, args.position):
            s = summarise(f)
            faces.append({**face_base(f, fa), **({key: s} if key else (s or {}))})
        return _hoist_sources({"image": args.image, "num_faces": fa.num_faces, "faces": faces})

    return run


def _hoist_sources(result: dict) -> dict:
    """Name each model once in a top-level ``sources`` map instead of once per face (shorter prompts)."""
    sources: dict[str, str] = {}
    for face in result["faces"]:
        for key, value in face.items():
            if isinstance(value, dict) and isinstance(value.get("source"), str):
                sources[key] = value.pop("source")
    if sources:
        result["sources"] = sources
    return result


def _run_detect(args: DetectArgs, store: ImageStore) -> dict:
    fa = store.analysis(args.image, ())
    faces = [f for f in fa.faces if args.min_score is None or f.score >= args.min_score]
    return {"image": args.image, "image_size": [fa.image.width, fa.image.height], "num_faces": len(faces),
            "faces": [face_base(f, fa) for f in faces], "source": faces[0].detector if faces else None}


def _analyze_face(face: Face) -> dict:
    out: dict[str, Any] = {}
    if (p := pose_summary(face)) is not None:
        out["pose"] = p
    out.update(expression_summary(face))
    out.update(attributes_summary(face))
    if (q := quality_summary(face)) is not None:
        out["quality"] = q
    if face.parse is not None:
        out["visible_regions"] = sorted(k for k, r in face.parse.regions.items() if r.area > 0)
    return out


def _face_for_identity(store: ImageStore, image_id: str, face_id: int | None) -> tuple[Face, FaceAnalysis]:
    fa = store.analysis(image_id, ())
    if not fa.faces:
        raise ToolError(f"no face was found in {image_id}")
    if face_id is None:
        from .recognizer import main_face

        return fa.faces[main_face(fa.faces, fa.image.width, fa.image.height)], fa
    return _faces(fa, face_id)[0], fa


def _embedding(store: ImageStore, image_id: str, face: Face):
    from .recognizer import get_recognizer

    if face.embedding is not None:
        return face.embedding
    return get_recognizer().embed(store.loaded(image_id), face)


def _run_verify(args: VerifyArgs, store: ImageStore) -> dict:
    from .recognizer import get_recognizer

    rec = get_recognizer()
    fa_face, _ = _face_for_identity(store, args.image_a, args.face_a)
    fb_face, _ = _face_for_identity(store, args.image_b, args.face_b)
    d = rec.distance(_embedding(store, args.image_a, fa_face), _embedding(store, args.image_b, fb_face))
    return {"image_a": args.image_a, "face_a": fa_face.id, "image_b": args.image_b, "face_b": fb_face.id,
            "face_choice": ["asked" if f is not None else "main face" for f in (args.face_a, args.face_b)],
            "same_person": d <= rec.threshold, "distance": _r(d, 3), "similarity": _r(rec.similarity(d)),
            "threshold": _r(rec.threshold, 3), "source": rec.source, "kind": ESTIMATE}


def _run_identify(args: IdentifyArgs, store: ImageStore) -> dict:
    gallery = store.gallery
    fa = store.analysis(args.image, ())
    faces = _faces(fa, args.face_id, args.position)
    out = []
    for f in faces:
        res = gallery.identify(_embedding(store, args.image, f), top_k=args.top_k)
        out.append({**face_base(f, fa), "name": res.name, "known": res.known, "similarity": _r(res.similarity),
                    "threshold": _r(res.threshold, 3),
                    "matches": [{"name": m.name, "similarity": _r(m.similarity), "within_threshold": m.within_threshold}
                                for m in res.matches],
                    "source": res.source, "kind": ESTIMATE})
    return {"image": args.image, "num_faces": fa.num_faces, "faces": out,
            "note": "names come only from the enrolled gallery; 'unknown' means no enrolled person matched"}


# ------------------------------------------------------------------ composite tools for common asks

# Looking at the camera: the eyes' direction is the head's yaw plus the iris offset (eye half-widths) times
# about 40 degrees; within these limits the person counts as looking at the camera.
GAZE_DEG_PER_OFFSET, LOOK_MAX_DEG, LOOK_MAX_PITCH = 40.0, 15.0, 20.0


def gaze_summary(face: Face) -> dict | None:
    p, c = face.pose, face.cues
    if p is None:
        return None
    has_iris = c is not None and not c.gaze_direction.startswith("unknown")
    eyes_deg = GAZE_DEG_PER_OFFSET * c.gaze[0] if has_iris else 0.0
    horizontal = p.yaw + eyes_deg
    looking = abs(horizontal) <= LOOK_MAX_DEG and abs(p.pitch) <= LOOK_MAX_PITCH
    out = {"looking_at_camera": looking, "head": p.direction, "yaw": _r(p.yaw, 0), "pitch": _r(p.pitch, 0),
           "eyes": c.gaze_direction if c is not None else "unknown", "kind": ESTIMATE}
    if has_iris:
        out["gaze_yaw"] = _r(horizontal, 0)
    return out


def _eyes_open(face: Face) -> float | None:
    c = face.cues
    return None if c is None else _r(1.0 - max(c.right_eye_closed.score, c.left_eye_closed.score))


def _rank_value(face: Face, by: str) -> float | None:
    if by == "age":
        a = face.attributes
        return None if a is None or a.perceived_age is None else _r(a.perceived_age.value, 0)
    if by == "smile":
        return None if face.cues is None else _r(face.cues.smile.score)
    if by == "eyes_open":
        return _eyes_open(face)
    if by == "face_size":
        return _r(face.box.height, 0)
    g = gaze_summary(face)  # looking_at_camera: the smaller the gaze angle, the higher
    return None if g is None else _r(-abs(g.get("gaze_yaw", g["yaw"])), 0)


_RANK_STEPS = {"age": ("attributes",), "smile": ("cues",), "eyes_open": ("cues",), "face_size": (),
               "looking_at_camera": ("pose", "cues")}


def _run_rank(args: RankArgs, store: ImageStore) -> dict:
    fa = store.analysis(args.image, _RANK_STEPS[args.by])
    rows = []
    for f in fa.faces:
        v = _rank_value(f, args.by)
        if v is not None:
            rows.append({"face_id": f.id, "position": position_words(f, fa.image.width, fa.image.height, fa.faces),
                         "value": v})
    rows.sort(key=lambda r: -r["value"])
    out: dict[str, Any] = {"image": args.image, "num_faces": fa.num_faces, "by": args.by, "order": rows}
    if rows:
        out["highest"], out["lowest"] = rows[0]["face_id"], rows[-1]["face_id"]
    if args.by == "age":
        out["kind"] = ESTIMATE
    return out


def _run_passport(args: ImageArgs, store: ImageStore) -> dict:
    from .quality import passport_checklist

    fa = store.analysis(args.image, ("pose", "cues", "quality"))
    img = store.loaded(args.image)
    return {"image": args.image, "num_faces": fa.num_faces,
            **passport_checklist(list(fa.faces), fa.image.width, fa.image.height, img.rgb)}


def _hair_runner(args: FaceArgs, store: ImageStore) -> dict:
    from .parser import hair_colour

    fa = store.analysis(args.image, ("parse",))
    rgb = store.loaded(args.image).rgb
    faces = []
    for f in _faces(fa, args.face_id, args.position):
        hc = hair_colour(rgb, f.parse) if f.parse is not None else {"hair_visible": False, "hair_colour": None}
        faces.append({**face_base(f, fa), **hc})
    return {"image": args.image, "num_faces": fa.num_faces, "faces": faces, "kind": ESTIMATE,
            "note": "hats and headscarves count as hair; lighting shifts the colour"}


# ------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args_model: type[BaseModel]
    runner: Callable[[Any, ImageStore], dict]

    def parameters(self) -> dict:
        """JSON schema of the arguments, inlined (no $defs) and without pydantic's titles."""
        return _clean_schema(self.args_model.model_json_schema())

    def openai(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters()}}

    def validate(self, arguments: Mapping[str, Any] | str | None) -> BaseModel:
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise ToolError(f"arguments for {self.name} are not valid JSON: {e.msg}") from None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise ToolError(f"arguments for {self.name} must be a JSON object, got {type(arguments).__name__}")
        try:
            return self.args_model.model_validate(dict(arguments))
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}" for err in e.errors())
            raise ToolError(f"bad arguments for {self.name}: {problems}") from None

    def run(self, arguments: Mapping[str, Any] | str | None, store: ImageStore) -> dict:
        return self.runner(self.validate(arguments), store)


# keys that cost prompt tokens and tell the model nothing it needs (validation still enforces them)
_SCHEMA_NOISE = ("title", "$defs", "additionalProperties", "minLength", "maxLength")


def _clean_schema(schema: dict) -> dict:
    defs = schema.get("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].split("/")[-1]])
            # Optional[x] -> x with a null alternative: keep the plain type, which small models follow better
            if "anyOf" in node and len(node["anyOf"]) == 2 and {"type": "null"} in node["anyOf"]:
                inner = next(n for n in node["anyOf"] if n != {"type": "null"})
                node = {**{k: v for k, v in node.items() if k != "anyOf"}, **inner}
            return {k: walk(v) for k, v in node.items() if k not in _SCHEMA_NOISE}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(schema)
    for prop in out.get("properties", {}).values():
        if prop.get("default", 0) is None:
            del prop["default"]
    return out


_TOOLS = (
    ToolSpec("detect", "Find the faces in an image. Returns how many there are and, for each (numbered 1, 2, ... "
             "from left to right), its box in pixels, its position in the frame and the detector's score.",
             DetectArgs, _run_detect),
    ToolSpec("landmarks", "Facial landmarks of each face: the five key points (eyes, nose tip, mouth corners) "
             "in pixels, the distance between the eyes, and which landmark schemes were fitted.",
             FaceArgs, _per_face(("mesh", "landmarks68"), landmarks_summary, "landmarks")),
    ToolSpec("parse", "Segment each face into regions (skin, brows, eyes, nose, lips, mouth interior, hair) and "
             "report each region's share of the face and which regions are absent or hidden.",
             FaceArgs, _per_face(("parse",), parse_summary, "parse")),
    ToolSpec("pose", "Head pose of each face: yaw, pitch and roll in degrees and the direction in words "
             "(frontal, turned to their left/right, looking up/down, tilted).",
             FaceArgs, _per_face(("pose",), pose_summary, "pose")),
    ToolSpec("attributes", "Perceived age (with a range) and perceived gender of each face. These are model "
             "estimates from appearance, not facts about the person.",
             FaceArgs, _per_face(("attributes",), attributes_summary)),
    ToolSpec("expression", "Facial expression of each face: the expression class with its probability, and "
             "geometric cues (smile, mouth open, each eye closed, brows raised, gaze direction).",
             FaceArgs, _per_face(("expression", "cues"), expression_summary)),
    ToolSpec("quality", "Image quality of each face for analysis or recognition: overall score, usable or not "
             "and why, sharpness, exposure, face size in pixels, occlusion and pose extremity.",
             FaceArgs, _per_face(("quality",), quality_summary, "quality")),
    ToolSpec("verify", "Compare two faces (in two images, or two faces of one image) and say whether they are "
             "the same person: the verdict, the descriptor distance, a similarity and the threshold.",
             VerifyArgs, _run_verify),
    ToolSpec("identify", "Match faces against the gallery of enrolled people. Returns the enrolled name when a "
             "face matches someone within the threshold, otherwise 'unknown'. The only way to name anyone.",
             IdentifyArgs, _run_identify),
    ToolSpec("gaze", "Whether each face looks at the camera: head yaw and pitch plus the eyes' direction, "
             "combined into looking_at_camera (true/false).",
             FaceArgs, _per_face(("pose", "cues"), gaze_summary, "gaze")),
    ToolSpec("rank", "Order the faces of an image by perceived age, smile, eyes open, face size or looking at the "
             "camera, highest first: for oldest / youngest / most smiling / who looks at the camera.",
             RankArgs, _run_rank),
    ToolSpec("passport", "Passport / ID photo checklist: one face, frontal head, eyes open, neutral expression, "
             "even lighting, face size and centring, sharpness; each with its measurement and verdict.",
             ImageArgs, _run_passport),
    ToolSpec("hair", "Hair colour of each face from the parser's hair region (black, brown, blond, red, grey, "
             "white, ...), or that no hair is visible.",
             FaceArgs, _hair_runner),
    ToolSpec("analyze", "Everything at once for each face: pose, expression and cues, perceived age and gender, "
             "quality and visible regions. Use it when a question needs several of these.",
             FaceArgs, _per_face(DEFAULT_STEPS, _analyze_face)),
)

REGISTRY: dict[str, ToolSpec] = {t.name: t for t in _TOOLS}
TOOL_NAMES: tuple[str, ...] = tuple(REGISTRY)
ToolName = Literal["detect", "landmarks", "parse", "pose", "attributes", "expression", "quality", "verify",
                   "identify", "gaze", "rank", "passport", "hair", "analyze"]


def get_tool(name: str) -> ToolSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(TOOL_NAMES)}") from None


def openai_tools(names: Iterable[str] | None = None) -> list[dict]:
    """The OpenAI ``tools`` list (``{"type": "function", "function": {...}}``) for the named tools (default all)."""
    return [get_tool(n).openai() for n in (TOOL_NAMES if names is None else names)]


def run_tool(name: str, arguments: Mapping[str, Any] | str | None, store: ImageStore) -> dict:
    """Validate and run one tool call. Raises ``ToolError`` (or the tools' own ValueErrors) with plain messages."""
    return get_tool(name).run(arguments, store)


def result_json(result: Any) -> str:
    """The compact JSON text a tool result is shown to the model as (one line, no spaces)."""
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


# What the model sees of a result: only what an answer needs (short observations = short prompts = fast
# steps on a CPU). The full result stays with the caller for evidence and grounding.
_OBS_DROP = frozenset({"box", "source", "sources", "kind", "detector_score", "image_size", "note", "top3",
                       "threshold", "median_rgb", "exposure", "occlusion", "pose_extremity", "inter_ocular_px",
                       "image", "image_a", "image_b", "distance"})


def _obs(node: Any, key: str | None = None) -> Any:
    if isinstance(node, dict):
        if set(node) == {"active", "score"}:  # a cue: its score (>= 0.5 means present)
            return node["score"]
        if key == "perceived_age":
            return {"value": node.get("value"), "range": node.get("range")}
        out = {}
        for k, v in node.items():
            if k in _OBS_DROP or (k == "matches" and isinstance(v, list) and len(v) <= 1):
                continue
            out[k] = _obs(v, k)
        return out
    if isinstance(node, list):
        return [_obs(v, key) for v in node]
    if isinstance(node, float) and key in ("yaw", "pitch", "roll"):
        return round(node)
    return node


def observation(result: Any) -> Any:
    """The compact view of a tool result (or error) that goes back to the model as the tool turn."""
    return _obs(result)


def observation_json(result: Any) -> str:
    return result_json(observation(result))
