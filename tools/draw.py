"""Render tool results on the photo so a person can check them by eye (`--draw out.png`)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .schema import Detection, Face, FaceAnalysis, FaceParse

BOX_COLOURS = [(0, 230, 118), (41, 182, 246), (255, 202, 40), (239, 83, 80), (171, 71, 188), (38, 198, 218)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def _overlay_parse(base: Image.Image, parse: FaceParse, alpha: float = 0.35) -> Image.Image:
    from .parser import PALETTE, decode_label_map  # local: drawing boxes alone needs no parser

    labels = decode_label_map(parse)
    h, w = labels.shape
    colour = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), bool)
    for idx, name in enumerate(parse.labels):
        if name == "background":
            continue
        sel = labels == idx
        if sel.any():
            colour[sel] = PALETTE.get(name, ((idx * 67) % 255, (idx * 131) % 255, (idx * 29) % 255))
            mask |= sel
    x0, y0 = int(round(parse.box.x1)), int(round(parse.box.y1))
    region = base.crop((x0, y0, x0 + w, y0 + h))
    reg = np.asarray(region, dtype=np.float32)
    hh, ww = reg.shape[:2]  # crop may be cut at the image border
    blend = reg.copy()
    m = mask[:hh, :ww]
    blend[m] = (1 - alpha) * reg[m] + alpha * colour[:hh, :ww][m]
    base.paste(Image.fromarray(blend.round().astype(np.uint8)), (x0, y0))
    return base


def _dot(d: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    d.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def draw_faces(
    image: np.ndarray | Image.Image,
    faces: list[Face] | list[Detection] | FaceAnalysis,
    *,
    parse: bool = True,
    mesh: bool = True,
    labels: bool = True,
) -> Image.Image:
    """Boxes with ids, 5 key points, 68 points, the mesh (with irises), parsing colours and a pose axis."""
    if isinstance(faces, FaceAnalysis):
        faces = faces.faces
    canvas = Image.fromarray(image).convert("RGB") if isinstance(image, np.ndarray) else image.convert("RGB")
    scale = max(1.0, max(canvas.size) / 640)  # line widths and fonts grow with the photo
    if parse:
        for f in faces:
            if isinstance(f, Face) and f.parse is not None:
                canvas = _overlay_parse(canvas, f.parse)
    # Points go on a translucent layer so the face stays visible under 478 mesh points.
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    pd = ImageDraw.Draw(layer)
    for f in faces:
        if not isinstance(f, Face):
            continue
        if mesh and f.mesh478 is not None:
            for p in f.mesh478.points[:468]:
                _dot(pd, p[0], p[1], max(0.7, 0.5 * scale), (255, 255, 255, 120))
            for p in f.mesh478.points[468:]:
                _dot(pd, p[0], p[1], 1.5 * scale, (255, 0, 255, 230))
        elif f.lmk68 is not None:  # the 68 points only where there is no mesh: both at once is clutter
            for p in f.lmk68.points:
                _dot(pd, p[0], p[1], 1.2 * scale, (255, 255, 0, 200))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")
    d = ImageDraw.Draw(canvas)
    font = _font(int(14 * scale))
    for i, f in enumerate(faces):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        b = f.box
        d.rectangle((b.x1, b.y1, b.x2, b.y2), outline=colour, width=max(2, int(2 * scale)))
        if isinstance(f, Face) and f.pose is not None:
            _draw_pose_axis(d, f, scale)
        for p in f.kpts5:
            _dot(d, p[0], p[1], 2.0 * scale, (255, 40, 40))
        if labels:
            text = f"#{f.id}" if isinstance(f, Face) else f"#{i + 1}"
            if isinstance(f, Face) and f.expression is not None:
                text += f" {f.expression.value}?"  # the '?' marks an estimate
            tb = d.textbbox((b.x1, b.y1), text, font=font)
            ty = b.y1 - (tb[3] - tb[1]) - 4 * scale
            if ty < 0:
                ty = b.y2 + 2
            d.rectangle((b.x1, ty, b.x1 + (tb[2] - tb[0]) + 6 * scale, ty + (tb[3] - tb[1]) + 4 * scale), fill=colour)
            d.text((b.x1 + 3 * scale, ty), text, fill=(0, 0, 0), font=font)
    return canvas


def _draw_pose_axis(d: ImageDraw.ImageDraw, f: Face, scale: float) -> None:
    """A short arrow from the nose tip in the direction the head points (yaw right, pitch up)."""
    if not f.kpts5 or f.pose is None:
        return
    nx, ny = f.kpts5[2]
    length = 0.6 * f.box.width
    yaw, pitch = math.radians(f.pose.yaw), math.radians(f.pose.pitch)
    ex, ey = nx + length * math.sin(yaw) * math.cos(pitch), ny - length * math.sin(pitch)
    d.line((nx, ny, ex, ey), fill=(255, 64, 64), width=max(2, int(3 * scale)))
