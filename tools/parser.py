"""Face parsing (per-pixel region labels) from the 478-point mesh plus MediaPipe's selfie segmentation.

No package ships a face-parsing network, so the regions are built from what we have:

* **Mesh polygons** (landmark_groups.MESH478) rasterised with ``cv2.fillPoly`` in this order, later ones
  on top: face oval -> ``skin``; ``nose``; brows; eyes (eyelid contours); ``upper_lip`` / ``lower_lip``
  (outer minus inner lip contour); ``mouth_interior`` (inside the inner lip contour: teeth, tongue).
* **Hair (approximation).** ``selfie_segmentation.tflite`` (256 x 256, one batched call for all faces of
  an image, each on a square crop around its head) gives a person mask. Inside a head-shaped region (an
  ellipse over the face oval, reaching ~0.6 face heights above it and a third of a face width to each
  side, cut at chin level), person pixels outside the face oval are ``hair`` unless their colour matches
  this face's own skin (a Gaussian in YCrCb fitted to the cheeks and forehead): those are ``skin``
  (upper forehead, ears). Inside the mesh's forehead band, pixels far from the skin colour are ``hair``
  too (fringes). What this cannot tell: hats and headscarves count as hair, long hair below the chin and
  beards are not labelled, bald heads are skin.
* Neck and clothes are not labelled (background).

The label map covers a crop of the image (``FaceParse.box``: the face oval's extent grown 1.8 x, with
integer corners, clipped to the image) and is stored run-length encoded; ``decode_label_map`` restores it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from .assets import asset_path
from .landmark_groups import MESH478
from .litert_runtime import LiteModel, load_model
from .schema import Box, FaceParse, Landmarks, RegionStats

LABELS = [
    "background", "skin", "right_brow", "left_brow", "right_eye", "left_eye", "nose",
    "upper_lip", "lower_lip", "mouth_interior", "hair",
]
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
PALETTE: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "skin": (255, 204, 153),
    "right_brow": (153, 76, 0),
    "left_brow": (204, 102, 0),
    "right_eye": (0, 153, 255),
    "left_eye": (0, 204, 204),
    "nose": (255, 153, 51),
    "upper_lip": (255, 0, 102),
    "lower_lip": (204, 0, 153),
    "mouth_interior": (102, 0, 51),
    "hair": (102, 51, 204),
}
SOURCE = "mesh478 polygons + mediapipe selfie segmentation"
CROP_SCALE = 1.8  # label-map crop side relative to the face oval's extent
SEG_SCALE = 2.6  # selfie-segmentation crop side relative to the face oval's long side
SKIN_DISTANCE = 2.5  # Mahalanobis distance in (Y, Cr, Cb) within which a pixel counts as this face's skin
POLY_EPSILON = 0.01  # contour simplification, relative to the crop size
MAX_POLYGONS = 4  # per region, largest first


class ParseInputError(ValueError):
    """The parser was given an unusable image or landmark set."""


def palette_array() -> np.ndarray:
    """(len(LABELS), 3) uint8 colours, indexed by label index: ``palette_array()[label_map]`` is an image."""
    return np.array([PALETTE[name] for name in LABELS], np.uint8)


def encode_rle(label_map: np.ndarray) -> list[tuple[int, int]]:
    """(label, run length) pairs of a label map read row-major."""
    flat = np.asarray(label_map, np.uint8).ravel()
    if flat.size == 0:
        return []
    starts = np.concatenate([[0], np.nonzero(flat[1:] != flat[:-1])[0] + 1])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return [(int(flat[s]), int(n)) for s, n in zip(starts, lengths)]


def decode_label_map(parse: FaceParse) -> np.ndarray:
    """The (height, width) uint8 label map of a FaceParse (indices into ``parse.labels``)."""
    h, w = parse.size
    if not parse.rle:
        return np.zeros((h, w), np.uint8)
    labels = np.array([r[0] for r in parse.rle], np.uint8)
    lengths = np.array([r[1] for r in parse.rle], np.int64)
    if lengths.sum() != h * w or (lengths < 0).any():
        raise ParseInputError(f"the run lengths add up to {int(lengths.sum())}, not {h} x {w} = {h * w}")
    return np.repeat(labels, lengths).reshape(h, w)


def _mesh_points(mesh: Landmarks) -> np.ndarray:
    if not isinstance(mesh, Landmarks):
        raise ParseInputError(f"expected mesh478 Landmarks, got {type(mesh).__name__}")
    if mesh.scheme != "mesh478" or len(mesh.points) not in (468, 478):
        raise ParseInputError(
            f"the parser needs a mesh478 landmark set (468 or 478 points); got {mesh.scheme} with "
            f"{len(mesh.points)} points"
        )
    pts = np.array([p[:2] for p in mesh.points], np.float64)
    if not np.isfinite(pts).all():
        raise ParseInputError("the mesh has non-finite points")
    return pts


def _crop_box(pts: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    oval = pts[MESH478["face_oval"]]
    x1, y1 = oval.min(0)
    x2, y2 = oval.max(0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = (x2 - x1) * CROP_SCALE / 2, (y2 - y1) * CROP_SCALE / 2
    # more room above (hair) than below (chin): shift the crop up by a tenth of the face height
    cy -= 0.1 * (y2 - y1)
    bx1, by1 = max(0, int(math.floor(cx - hw))), max(0, int(math.floor(cy - hh)))
    bx2, by2 = min(width, int(math.ceil(cx + hw))), min(height, int(math.ceil(cy + hh)))
    if bx2 - bx1 < 1 or by2 - by1 < 1:
        raise ParseInputError("the face lies outside the image")
    return bx1, by1, bx2, by2


def _seg_square(pts: np.ndarray) -> tuple[float, float, float]:
    """(x0, y0, side) of the square the selfie-segmentation model sees for this face."""
    oval = pts[MESH478["face_oval"]]
    x1, y1 = oval.min(0)
    x2, y2 = oval.max(0)
    side = SEG_SCALE * max(x2 - x1, y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 - 0.15 * (y2 - y1)
    return cx - side / 2, cy - side / 2, side


def _fill(label_map: np.ndarray, polygon: np.ndarray, label: str, origin: tuple[int, int]) -> None:
    shifted = np.round((polygon - np.array(origin)) * 4).astype(np.int32)  # 2 bits of sub-pixel precision
    cv2.fillPoly(label_map, [shifted], LABEL_INDEX[label], lineType=cv2.LINE_8, shift=2)


def _polygon_mask(shape: tuple[int, int], polygon: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    shifted = np.round((polygon - np.array(origin)) * 4).astype(np.int32)
    cv2.fillPoly(m, [shifted], 1, shift=2)
    return m.astype(bool)


def _skin_model(ycrcb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and inverse covariance of (Y, Cr, Cb) over the masked skin pixels. Brightness is part of it:
    in warm-lit photos hair and skin share their chroma, and brown or blond hair differs in brightness."""
    samples = ycrcb[mask].astype(np.float64)
    if len(samples) < 20:
        return None
    mean = samples.mean(0)
    cov = np.cov(samples.T) + np.eye(3) * 4.0  # floor: JPEG-flat or gray skin has almost no spread
    return mean, np.linalg.inv(cov)


def _skin_like(ycrcb: np.ndarray, model: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    mean, icov = model
    d = ycrcb.astype(np.float64) - mean
    return np.einsum("...i,ij,...j->...", d, icov, d) < SKIN_DISTANCE**2


def _regions(label_map: np.ndarray, origin: tuple[int, int]) -> dict[str, RegionStats]:
    out: dict[str, RegionStats] = {}
    eps = POLY_EPSILON * max(label_map.shape)
    for idx, name in enumerate(LABELS):
        if name == "background":
            continue
        mask = (label_map == idx).astype(np.uint8)
        area = int(mask.sum())
        if area == 0:
            continue
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contours = sorted(contours, key=cv2.contourArea, reverse=True)[:MAX_POLYGONS]
        polys = []
        for c in contours:
            c = cv2.approxPolyDP(c, eps, True).reshape(-1, 2)
            if len(c) >= 3:
                polys.append([(float(x + origin[0]), float(y + origin[1])) for x, y in c])
        out[name] = RegionStats(area=area, polygons=polys)
    return out


class FaceParser:
    """Label maps for faces from their 478-point meshes (and one selfie-segmentation call per image)."""

    def __init__(self, hair: bool = True) -> None:
        self.hair = hair
        self._seg: LiteModel | None = load_model(asset_path("selfie_segmentation")) if hair else None

    def _person_masks(self, rgb: np.ndarray, squares: list[tuple[float, float, float]]) -> list[np.ndarray]:
        """Person probability (256 x 256) for each square, all in one batched model call."""
        n = self._seg.input_size[0]
        crops = []
        for x0, y0, side in squares:
            s = n / side
            m = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]])
            crops.append(cv2.warpAffine(rgb, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
        out = self._seg.run(np.stack(crops).astype(np.float32) / 255.0)
        prob = next(iter(out.values()))
        return [prob[i, :, :, 0] for i in range(len(squares))]

    def _label_map(self, rgb: np.ndarray, pts: np.ndarray, person: np.ndarray | None,
                   square: tuple[float, float, float] | None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        h, w = rgb.shape[:2]
        bx1, by1, bx2, by2 = _crop_box(pts, w, h)
        origin = (bx1, by1)
        shape = (by2 - by1, bx2 - bx1)
        lm = np.zeros(shape, np.uint8)
        g = MESH478
        _fill(lm, pts[g["face_oval"]], "skin", origin)
        oval_mask = lm == LABEL_INDEX["skin"]

        if person is not None and square is not None:
            crop = rgb[by1:by2, bx1:bx2]
            ycrcb = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb)
            # the face's own skin: inside the oval, away from eyes, brows, nose and mouth
            features = np.zeros(shape, bool)
            for name in ("right_eye", "left_eye", "right_brow", "left_brow", "mouth_outer", "nose"):
                features |= _polygon_mask(shape, pts[g[name]], origin)
            model = _skin_model(ycrcb, oval_mask & ~features)
            person_crop = self._resample(person, square, (bx1, by1), shape)
            head = self._head_region(pts, origin, shape)
            candidates = head & (person_crop > 0.5) & ~oval_mask
            skin_like = _skin_like(ycrcb, model) if model is not None else np.zeros(shape, bool)
            skin_ok = skin_like & self._skin_zone(pts, origin, shape)
            lm[candidates & ~skin_ok] = LABEL_INDEX["hair"]
            lm[candidates & skin_ok] = LABEL_INDEX["skin"]
            # fringes: non-skin pixels in the forehead band
            if model is not None:
                band = _polygon_mask(shape, pts[g["forehead"]], origin)
                lm[band & ~skin_like & (person_crop > 0.5)] = LABEL_INDEX["hair"]

        _fill(lm, pts[g["nose"]], "nose", origin)
        _fill(lm, pts[g["right_brow"]], "right_brow", origin)
        _fill(lm, pts[g["left_brow"]], "left_brow", origin)
        _fill(lm, pts[g["right_eye"]], "right_eye", origin)
        _fill(lm, pts[g["left_eye"]], "left_eye", origin)
        _fill(lm, pts[g["upper_lip"]], "upper_lip", origin)
        _fill(lm, pts[g["lower_lip"]], "lower_lip", origin)
        _fill(lm, pts[g["mouth_inner"]], "mouth_interior", origin)
        return lm, (bx1, by1, bx2, by2)

    @staticmethod
    def _resample(person: np.ndarray, square: tuple[float, float, float], origin: tuple[int, int],
                  shape: tuple[int, int]) -> np.ndarray:
        """The person probability (model grid over ``square``) at every pixel of the crop."""
        x0, y0, side = square
        s = person.shape[0] / side
        # crop pixel (u, v) is image pixel (u + ox, v + oy), which is model pixel ((x - x0) * s, (y - y0) * s)
        m = np.array([[s, 0, (origin[0] - x0) * s], [0, s, (origin[1] - y0) * s]], np.float64)
        return cv2.warpAffine(person, m, (shape[1], shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT)

    @staticmethod
    def _head_region(pts: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        """Where hair can be: an ellipse over the face oval, wider and taller, down to mouth level (below
        it the person mask beside the jaw is mostly neck and collar)."""
        oval = pts[MESH478["face_oval"]]
        x1, y1 = oval.min(0)
        x2, y2 = oval.max(0)
        fw, fh = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 - origin[0], (y1 + y2) / 2 - origin[1] - 0.25 * fh
        ax, ay = 0.5 * fw + 0.33 * fw, 0.5 * fh + 0.45 * fh
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
        mouth = (pts[61, 1] + pts[291, 1]) / 2 - origin[1]
        return inside & (yy <= mouth)

    @staticmethod
    def _skin_zone(pts: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        """Where skin outside the mesh can be: the upper forehead (the oval stretched a quarter upwards
        from the chin; the mesh stops at mid-forehead) and the ears (beside the oval between eye and
        nose-base height). Skin-coloured pixels elsewhere in the head region (blond hair in warm light)
        count as hair."""
        oval = pts[MESH478["face_oval"]] - np.array(origin, np.float64)
        chin = oval[:, 1].max()
        stretched = oval.copy()
        stretched[:, 1] = chin - (chin - oval[:, 1]) * 1.25
        zone = _polygon_mask(shape, stretched + np.array(origin), origin)
        fw = oval[:, 0].max() - oval[:, 0].min()
        top = min(pts[33, 1], pts[263, 1]) - origin[1]
        bottom = pts[2, 1] - origin[1]
        cy = (top + bottom) / 2
        ears = np.zeros(shape, np.uint8)
        for side in (234, 454):  # the oval's points at ear height, subject's right and left
            cx = pts[side, 0] - origin[0]
            axes = (max(1, int(round(0.12 * fw))), max(1, int(round(0.6 * (bottom - top)))))
            cv2.ellipse(ears, (int(round(cx)), int(round(cy))), axes, 0, 0, 360, 1, -1)
        zone |= ears.astype(bool)
        return zone

    def parse_all(
        self,
        rgb: np.ndarray,
        meshes: Sequence[Landmarks | None],
        boxes: Sequence[Box | None] | None = None,
    ) -> list[FaceParse | None]:
        """Parse several faces of one image (None where a face has no mesh), one segmentation call.

        ``boxes`` (the detector boxes) are accepted for symmetry with the other tools; the crop is taken
        from the mesh, which is where the face really is."""
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ParseInputError("the parser needs an H x W x 3 uint8 RGB array (see facellm.tools.load_image)")
        if rgb.shape[0] < 2 or rgb.shape[1] < 2:
            raise ParseInputError(f"the image is too small ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
        if boxes is not None and len(boxes) != len(meshes):
            raise ParseInputError(f"{len(meshes)} meshes but {len(boxes)} boxes")
        points = [None if m is None else _mesh_points(m) for m in meshes]
        todo = [i for i, p in enumerate(points) if p is not None]
        squares = {i: _seg_square(points[i]) for i in todo}
        persons: dict[int, np.ndarray] = {}
        if self._seg is not None and todo:
            for i, p in zip(todo, self._person_masks(rgb, [squares[i] for i in todo])):
                persons[i] = p
        out: list[FaceParse | None] = []
        for i, pts in enumerate(points):
            if pts is None:
                out.append(None)
                continue
            lm, (bx1, by1, bx2, by2) = self._label_map(rgb, pts, persons.get(i), squares.get(i))
            out.append(
                FaceParse(
                    labels=list(LABELS),
                    box=Box(x1=bx1, y1=by1, x2=bx2, y2=by2),
                    size=(int(lm.shape[0]), int(lm.shape[1])),
                    rle=encode_rle(lm),
                    regions=_regions(lm, (bx1, by1)),
                    source=SOURCE if self._seg is not None else "mesh478 polygons",
                )
            )
        return out

    def parse(self, rgb: np.ndarray, mesh: Landmarks, box: Box | None = None) -> FaceParse:
        """Parse one face from its mesh478 landmarks."""
        return self.parse_all(rgb, [mesh], None if box is None else [box])[0]


# ------------------------------------------------------------------ hair colour

MIN_HAIR_PIXELS = 40  # fewer labelled hair pixels than this: no colour is named


def colour_name(rgb: Sequence[float]) -> str:
    """A plain hair-colour word for a median RGB (0-255). Thresholds read off the bundled photos and real
    dataset faces by eye; lighting shifts them, so the word is an estimate."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    hi, lo = max(r, g, b), min(r, g, b)
    v, s = hi, (hi - lo) / hi if hi > 0 else 0.0
    hue = 0.0
    if hi > lo:
        if hi == r:
            hue = (60 * (g - b) / (hi - lo)) % 360
        elif hi == g:
            hue = 60 * (b - r) / (hi - lo) + 120
        else:
            hue = 60 * (r - g) / (hi - lo) + 240
    if v < 0.2:
        return "black"
    if s < 0.15:
        return "white" if v > 0.75 else "grey" if v > 0.4 else "black"
    if v < 0.33:
        return "dark brown"
    if (hue < 22 or hue > 340) and s > 0.5 and v > 0.4:
        return "red"
    if 22 <= hue <= 60 and v > 0.62 and s < 0.65:
        return "blond"
    return "brown" if v < 0.55 else "light brown"


def hair_colour(rgb: np.ndarray, parse: FaceParse) -> dict:
    """Colour of the pixels the parser labelled ``hair`` for one face: the median RGB and a colour word."""
    labels = decode_label_map(parse)
    if "hair" not in parse.labels:
        return {"hair_visible": False, "hair_colour": None}
    mask = labels == parse.labels.index("hair")
    x1, y1 = int(parse.box.x1), int(parse.box.y1)
    h, w = labels.shape
    crop = rgb[y1:y1 + h, x1:x1 + w]
    mask = mask[: crop.shape[0], : crop.shape[1]]
    n = int(mask.sum())
    if n < MIN_HAIR_PIXELS:
        return {"hair_visible": False, "hair_colour": None}
    med = np.median(crop[mask].reshape(-1, 3), axis=0)
    return {"hair_visible": True, "hair_colour": colour_name(med), "median_rgb": [int(c) for c in med]}
