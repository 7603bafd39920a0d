"""Turn the image references of a request into decoded images, under the server's rules.

Accepted: ``data:image/...;base64,`` URIs (size-limited), server-side paths (plain or ``file://``) inside one of
the allowed folders, and http(s) URLs only when they start with an allow-listed prefix. Everything else is
refused with an ``ImageRefused`` (a ValueError, answered as HTTP 400) before any byte is read or fetched.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
import urllib.request
from pathlib import Path

from facellm.tools.image_io import ImageLoadError, LoadedImage, load_image

from .settings import ServeSettings


class ImageRefused(ValueError):
    """An image reference that the server will not use; the message says why and what to do instead. ``code`` is
    its error code in the server's vocabulary (serve/errors.py)."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


def _decode_data_uri(uri: str, limit: int) -> bytes:
    head, _, payload = uri.partition(",")
    if not payload or ";base64" not in head:
        raise ImageRefused("a data URI image must look like data:image/png;base64,<data>")
    if len(payload) * 3 // 4 > limit:
        raise ImageRefused(f"the image is larger than the server's limit of {limit} bytes", "image_too_large")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as err:
        raise ImageRefused(f"the data URI's base64 payload is malformed: {err}") from None


def _local_file(ref: str, settings: ServeSettings) -> Path:
    if ref.startswith("file://"):
        ref = urllib.parse.unquote(urllib.parse.urlparse(ref).path)
    if not settings.image_dirs:
        raise ImageRefused("this server accepts no server-side image paths; send the image as a data: URI")
    path = Path(ref).expanduser()
    if not path.is_absolute():
        raise ImageRefused(f"image paths must be absolute: {ref[:120]}")
    real = path.resolve()  # follows symlinks, so a link cannot lead out of the allowed folders
    if not any(real.is_relative_to(d) for d in settings.image_dirs):
        raise ImageRefused(f"{ref[:120]} is outside the folders this server may read images from")
    if not real.is_file():
        raise ImageRefused(f"no such image file: {ref[:120]}")
    if real.stat().st_size > settings.max_image_bytes:
        raise ImageRefused(f"the image is larger than the server's limit of {settings.max_image_bytes} bytes",
                           "image_too_large")
    return real


def _fetch(url: str, settings: ServeSettings) -> bytes:
    if not any(url.startswith(prefix) for prefix in settings.url_allowlist):
        raise ImageRefused(f"remote image URLs are not fetched unless allow-listed: {url[:120]}; send the image "
                           "as a data: URI")
    req = urllib.request.Request(url, headers={"User-Agent": "facellm-serve"})
    try:
        with urllib.request.urlopen(req, timeout=settings.fetch_timeout) as resp:  # noqa: S310 (allow-listed)
            data = resp.read(settings.max_image_bytes + 1)
    except OSError as err:
        raise ImageRefused(f"could not fetch {url[:120]}: {err}") from None
    if len(data) > settings.max_image_bytes:
        raise ImageRefused(f"the image is larger than the server's limit of {settings.max_image_bytes} bytes",
                           "image_too_large")
    return data


def resolve_image(ref: str, settings: ServeSettings) -> LoadedImage:
    """One ``image_url.url`` value -> a decoded RGB image, or ``ImageRefused``."""
    if not isinstance(ref, str) or not ref.strip():
        raise ImageRefused("an image_url part needs image_url.url")
    ref = ref.strip()
    low = ref.lower()
    if low.startswith("data:"):
        data, name = _decode_data_uri(ref, settings.max_image_bytes), "data URI"
    elif low.startswith(("http://", "https://")):
        data, name = _fetch(ref, settings), ref[:80]
    elif "://" in ref and not low.startswith("file://"):
        raise ImageRefused(f"unsupported image URL scheme: {ref[:40]}")
    else:
        path = _local_file(ref, settings)
        data, name = path.read_bytes(), path.name
    _check_pixels(data, settings.max_image_pixels)
    try:
        img = load_image(data, name=name)
    except ImageLoadError as err:
        raise ImageRefused(str(err)) from None
    if img.width * img.height > settings.max_image_pixels:
        raise ImageRefused(_too_many_pixels(settings.max_image_pixels, img.width, img.height))
    return img


def _too_many_pixels(limit: int, width: int | None = None, height: int | None = None) -> str:
    size = f" has {width}x{height} = {width * height:,} pixels," if width and height else " is"
    return (f"the image{size} over the server's limit of {limit:,} pixels ({limit / 1e6:g} MP); send a smaller "
            "version")


def _check_pixels(data: bytes, limit: int) -> None:
    """Refuse an image over the server's pixel limit from its header alone, before decoding it. Pillow's own
    decompression-bomb guard (a far larger number) would otherwise answer first, quoting its limit, not ours."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError:  # over twice Pillow's limit: far over ours
        raise ImageRefused(_too_many_pixels(limit)) from None
    except Exception:  # noqa: BLE001 (not an image Pillow can read: load_image says why)
        return
    if width * height > limit:
        raise ImageRefused(_too_many_pixels(limit, width, height))
