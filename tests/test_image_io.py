"""Bad and unusual image inputs: each is decoded correctly or refused with a clear message."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facellm.tools.image_io import ImageLoadError, load_image
from facellm.tools.photos import photo


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(photo("astronaut")).convert("RGB")


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_real_photo_loads_as_rgb_uint8():
    img = load_image(photo("astronaut"))
    assert img.rgb.shape == (512, 512, 3) and img.rgb.dtype == np.uint8
    assert img.info.width == 512 and img.info.format == "PNG" and len(img.info.sha256) == 64


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16", "I", "F", "1"])
def test_colour_modes_become_rgb(astronaut, mode):
    if mode in ("I;16", "I", "F"):
        gray = np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        src = Image.fromarray(gray.astype(dtype))
    else:
        src = astronaut.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I", "F") else "PNG"
    img = load_image(_bytes(src, fmt))
    assert img.rgb.shape == (512, 512, 3) and img.rgb.dtype == np.uint8
    assert img.info.mode == src.mode
    # the content survives: the stretched 16-bit / float result still looks like the photo
    ref = np.asarray(astronaut.convert("L"), dtype=np.float32)
    got = img.rgb.astype(np.float32).mean(axis=2)
    min_corr = 0.5 if mode == "1" else 0.8  # 1-bit is dithered
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > min_corr


def test_rgba_transparency_composited_on_white():
    arr = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    img = load_image(_bytes(Image.fromarray(arr, "RGBA"), "PNG"))
    assert (img.rgb == 255).all()


def test_exif_rotation_applied(astronaut):
    # A JPEG stored sideways with orientation 6 ("rotate 90 CW to view") must come out upright.
    stored = astronaut.crop((0, 0, 512, 300)).transpose(Image.Transpose.ROTATE_90)  # 300 x 512 stored
    exif = Image.Exif()
    exif[0x0112] = 6
    img = load_image(_bytes(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert img.info.exif_orientation == 6
    assert (img.width, img.height) == (512, 300)
    ref = np.asarray(astronaut.crop((0, 0, 512, 300)), dtype=np.float32)
    assert np.abs(img.rgb.astype(np.float32) - ref).mean() < 12


def test_ndarray_and_pil_inputs(astronaut):
    arr = np.asarray(astronaut)
    assert load_image(arr).rgb.shape == (512, 512, 3)
    assert load_image(astronaut).rgb.shape == (512, 512, 3)
    assert load_image(arr[..., 0]).rgb.shape == (512, 512, 3)  # 2-D gray
    assert load_image(arr.astype(np.float32) / 255.0).rgb.max() > 200  # float in [0, 1]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image at all, just text", "not an image"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\n", "not an image"),
    ],
)
def test_garbage_bytes_refused(data, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(data)


def test_truncated_jpeg_refused(astronaut):
    data = _bytes(astronaut, "JPEG", quality=90)
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_corrupted_png_refused(astronaut):
    data = bytearray(_bytes(astronaut, "PNG"))
    data[200:400] = b"\x00" * 200  # smash the pixel data: CRC and zlib both fail
    with pytest.raises(ImageLoadError):
        load_image(bytes(data))


def test_decompression_bomb_refused_before_decoding():
    # A 20000 x 20000 PNG compresses to a few hundred KB but would need 1.2 GB decoded.
    bomb = Image.new("L", (20000, 20000))
    data = _bytes(bomb, "PNG")
    assert len(data) < 2_000_000
    with pytest.raises(ImageLoadError, match="too large|decompression bomb"):
        load_image(data)


def test_zero_size_and_wrong_types(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="not a file"):
        load_image(tmp_path)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageLoadError, match="expected a file path"):
        load_image(12345)  # type: ignore[arg-type]
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, np.float32))
