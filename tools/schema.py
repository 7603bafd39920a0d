"""FaceAnalysis: the one typed, versioned schema for what the face tools measured.

Every later part (the region encoder, data_gen, the agent, eval's grounding check) reads these objects;
nobody re-parses tool output by hand. Conventions:

* Coordinates are pixels of the original image after EXIF rotation, x to the right, y down.
* Faces are sorted left to right (then top to bottom) and numbered from 1.
* Anatomical names are from the subject's point of view, as in iBUG-68 and MediaPipe: the subject's
  ``right_eye`` appears on the image's left.
* ``kpts5`` is in the usual alignment order: right eye, left eye, nose tip, right mouth corner, left mouth
  corner (i.e. image-left eye first).
* Every model estimate carries ``value``, ``probability`` and ``source`` (the model that made it), and
  perceived age / gender / expression are always labelled as estimates, never as facts.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

SCHEMA_VERSION = "1.0"

Point = tuple[float, float]
Point3 = tuple[float, float, float]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Box(_Model):
    """Axis-aligned box in pixels: (x1, y1) top-left, (x2, y2) bottom-right, exclusive."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> Point:
        return ((self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def scaled(self, factor: float) -> Box:
        """The box grown (or shrunk) about its centre by ``factor``."""
        cx, cy = self.center
        hw, hh = self.width * factor / 2, self.height * factor / 2
        return Box(x1=cx - hw, y1=cy - hh, x2=cx + hw, y2=cy + hh)

    def clipped(self, width: int, height: int) -> Box:
        return Box(
            x1=min(max(self.x1, 0.0), width),
            y1=min(max(self.y1, 0.0), height),
            x2=min(max(self.x2, 0.0), width),
            y2=min(max(self.y2, 0.0), height),
        )

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


class Keypoint(_Model):
    name: str
    x: float
    y: float


class Detection(_Model):
    """One face found by a detector."""

    box: Box
    score: float = Field(ge=0.0, le=1.0)
    kpts5: list[Point] = Field(description="right eye, left eye, nose tip, right and left mouth corner")
    keypoints: list[Keypoint] = Field(default_factory=list, description="the detector's own named points")
    source: str = Field(description="detector that found it, e.g. 'mediapipe-full-range'")


class Landmarks(_Model):
    """A set of landmarks in one scheme ('five', 'ibug68' or 'mesh478'), in image pixels.

    mesh478 points carry a third coordinate: relative depth in the same pixel scale (smaller is closer
    to the camera), as MediaPipe's face mesh gives it.
    """

    scheme: Literal["five", "ibug68", "mesh478"]
    points: list[tuple[float, ...]]
    source: str
    score: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="the landmark model's face-presence probability, where it gives one (mesh478: < 0.5 = no face)",
    )


class Estimate(_Model):
    """A categorical model estimate (perceived gender, expression class, ...). Never a fact."""

    value: str
    probability: float = Field(ge=0.0, le=1.0)
    probabilities: dict[str, float] = Field(default_factory=dict)
    source: str
    kind: Literal["model estimate"] = "model estimate"


class AgeEstimate(_Model):
    """Perceived age in years, as a model estimates it from appearance. Never a fact."""

    value: float
    low: float = Field(description="lower end of the model's ~80 % interval")
    high: float = Field(description="upper end of the model's ~80 % interval")
    probability: float = Field(ge=0.0, le=1.0, description="model's probability mass inside [low, high]")
    source: str
    kind: Literal["model estimate"] = "model estimate"


class Attributes(_Model):
    perceived_age: AgeEstimate | None = None
    perceived_gender: Estimate | None = None


class HeadPose(_Model):
    """Head rotation in degrees. yaw > 0: the subject turns to their left (towards image right);
    pitch > 0: head tilted up; roll > 0: head tilted towards the subject's left shoulder (clockwise in the
    image)."""

    yaw: float
    pitch: float
    roll: float
    direction: str = Field(description="plain words, e.g. 'frontal', 'turned to their left', 'looking down'")
    source: str


class Cue(_Model):
    """A geometric cue with a numeric score in [0, 1] and the thresholded verdict."""

    score: float
    active: bool


class ExpressionCues(_Model):
    smile: Cue
    mouth_open: Cue
    right_eye_closed: Cue
    left_eye_closed: Cue
    brow_raise: Cue
    gaze: Point = Field(description="iris offset from eye centre, x right / y down, in eye half-widths")
    gaze_direction: str
    source: str


class Quality(_Model):
    face_size: float = Field(description="inter-ocular distance in pixels")
    blur: float = Field(description="sharpness score in [0, 1]; low means blurred")
    exposure: float = Field(description="mean brightness of the face in [0, 1]")
    pose_extremity: float = Field(description="0 frontal ... 1 profile or beyond")
    occlusion: float = Field(description="share of the face region judged occluded, [0, 1]")
    score: float = Field(description="overall quality in [0, 1]")
    usable: bool
    reasons: list[str] = Field(default_factory=list, description="why it is unusable, if it is")


class RegionStats(_Model):
    area: int = Field(description="pixels")
    polygons: list[list[Point]] = Field(default_factory=list)


class FaceParse(_Model):
    """Per-pixel region labels for one face. The label map covers ``box`` (a crop of the image) and is
    stored run-length encoded, row-major, as alternating runs starting with label ``runs[0][0]``."""

    labels: list[str]
    box: Box
    size: tuple[int, int] = Field(description="(height, width) of the label map")
    rle: list[tuple[int, int]] = Field(description="(label index, run length) pairs, row-major")
    regions: dict[str, RegionStats]
    source: str


class Face(_Model):
    id: int = Field(ge=1)
    box: Box
    score: float
    kpts5: list[Point]
    detector: str
    lmk68: Landmarks | None = None
    mesh478: Landmarks | None = None
    groups: dict[str, list[Point]] = Field(default_factory=dict, description="named landmark groups")
    parse: FaceParse | None = None
    pose: HeadPose | None = None
    cues: ExpressionCues | None = None
    attributes: Attributes | None = None
    expression: Estimate | None = None
    quality: Quality | None = None
    embedding: list[float] | None = Field(default=None, description="identity descriptor (128-d dlib)")
    embedding_source: str | None = None


class ImageInfo(_Model):
    width: int
    height: int
    sha256: str
    path: str | None = None
    format: str | None = None
    mode: str = Field(description="original colour mode before conversion to RGB")
    exif_orientation: int = 1


class FaceAnalysis(_Model):
    schema_version: str = SCHEMA_VERSION
    image: ImageInfo
    faces: list[Face] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def face(self, face_id: int) -> Face:
        for f in self.faces:
            if f.id == face_id:
                return f
        raise KeyError(f"no face {face_id}; this image has faces {[f.id for f in self.faces]}")

    def to_json(self, **kwargs) -> str:
        return self.model_dump_json(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> FaceAnalysis:
        data = json.loads(text)
        data.pop("num_faces", None)  # computed, not stored
        return cls.model_validate(data)


def sort_left_to_right(boxes: list[Box]) -> list[int]:
    """Indices that order faces left to right, then top to bottom (ties within a few px)."""
    return sorted(range(len(boxes)), key=lambda i: (round(boxes[i].center[0]), round(boxes[i].center[1])))
