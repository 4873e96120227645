"""Every way a picture can be stored reaches the model as a person sees it: each form below is decoded by the
intake the bot and the command line share, and compared with the 8-bit upright RGB picture a viewer shows
(mean absolute error and correlation), not just "it decoded"."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from inference.images import decode_image, flatten_to_rgb

WIDTH, HEIGHT = 96, 64
LIMIT = 40_000_000


def scene() -> np.ndarray:
    """An 8-bit RGB picture with structure in every channel: gradients, a bright square, a dark bar."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 255 / (WIDTH - 1), y * 255 / (HEIGHT - 1), (x + y) * 255 / (WIDTH + HEIGHT - 2)], -1)
    rgb[10:30, 20:50] = (250, 240, 10)
    rgb[45:55, :] = (20, 20, 120)
    return rgb.round().astype(np.uint8)


def gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def as_rgb(gray_values: np.ndarray) -> np.ndarray:
    return np.repeat(gray_values[..., None], 3, axis=-1)


def saved(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format, **options)
    return out.getvalue()


def png_16_bit(values: np.ndarray) -> bytes:
    """A 16-bit PNG (gray [H, W] or RGB [H, W, 3]) written by hand: Pillow cannot write 16-bit colour."""
    colour_type = 2 if values.ndim == 3 else 0
    rows = values.astype(">u2").reshape(values.shape[0], -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None] / 255
    return (rgb * a + 255 * (1 - a)).round().astype(np.uint8)


def sixteen_bit_gray():
    g = gray(scene())
    return png_16_bit(g.astype(np.uint32) * 257), as_rgb(g)


def sixteen_bit_colour():
    rgb = scene()
    return png_16_bit(rgb.astype(np.uint32) * 257), rgb


def thirty_two_bit_gray_in_memory():
    g = gray(scene())
    full_range = (g.astype(np.float64) * (2**31 - 1) / 255).round().astype(np.int32)  # Pillow's I is signed
    return Image.fromarray(full_range, "I"), as_rgb(g)


def float_gray_in_memory():
    g = gray(scene())
    return Image.fromarray((g / 255).astype(np.float32), "F"), as_rgb(g)


def palette(transparent: bool):
    rgb = scene()
    image = Image.fromarray(rgb).quantize(64)
    expected = np.asarray(image.convert("RGB"))
    if transparent:  # the first palette entry is see-through
        image.info["transparency"] = 0
        alpha = np.where(np.asarray(image) == 0, 0, 255)
        expected = on_white(expected, alpha)
        return saved(image, "PNG", transparency=0), expected
    return saved(image, "PNG"), expected


def one_bit():
    bits = gray(scene()) > 128
    return saved(Image.fromarray(bits), "PNG"), as_rgb(np.where(bits, 255, 0).astype(np.uint8))


def gray_with_alpha():
    g = gray(scene())
    alpha = np.tile(np.linspace(0, 255, WIDTH).round().astype(np.uint8), (HEIGHT, 1))
    image = Image.merge("LA", [Image.fromarray(g), Image.fromarray(alpha)])
    return saved(image, "PNG"), on_white(as_rgb(g), alpha)


def cmyk():
    image = Image.fromarray(scene()).convert("CMYK")
    return saved(image, "JPEG", quality=95), np.asarray(image.convert("RGB"))


def exif_rotated():
    rgb = scene()
    stored = Image.fromarray(
        np.rot90(rgb, k=1).copy()
    )  # stored sideways, with "rotate 90° clockwise" in EXIF
    exif = Image.Exif()
    exif[0x0112] = 6
    return saved(stored, "JPEG", quality=95, exif=exif), rgb


def progressive():
    return saved(Image.fromarray(scene()), "JPEG", quality=95, progressive=True), scene()


def animated():
    first = Image.fromarray(scene())
    second = Image.fromarray(255 - scene())
    data = saved(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return data, np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB")
    )  # the first frame, as GIF's palette has it


FORMS = {
    "16-bit grayscale PNG": sixteen_bit_gray,
    "16-bit colour PNG": sixteen_bit_colour,
    "32-bit grayscale (in memory)": thirty_two_bit_gray_in_memory,
    "float grayscale (in memory)": float_gray_in_memory,
    "palette": lambda: palette(False),
    "palette with transparency": lambda: palette(True),
    "1-bit": one_bit,
    "gray with alpha": gray_with_alpha,
    "CMYK JPEG": cmyk,
    "EXIF-rotated JPEG": exif_rotated,
    "progressive JPEG": progressive,
    "animated GIF": animated,
}
LOSSY = {"CMYK JPEG": 4.0, "EXIF-rotated JPEG": 4.0, "progressive JPEG": 4.0}


@pytest.mark.parametrize("form", FORMS)
def test_every_storage_form_reaches_the_model_as_a_person_sees_it(form):
    stored, expected = FORMS[form]()
    if isinstance(stored, Image.Image):  # no accepted file format holds it: the shared conversion alone
        decoded = flatten_to_rgb(stored)
    else:
        decoded = decode_image(stored, max_pixels=LIMIT)
    assert decoded.mode == "RGB" and decoded.size == (WIDTH, HEIGHT), form
    got = np.asarray(decoded).astype(np.float64)
    want = expected.astype(np.float64)
    error = float(np.abs(got - want).mean())
    correlation = float(np.corrcoef(got.ravel(), want.ravel())[0, 1])
    assert error <= LOSSY.get(form, 1.0), f"{form}: mean absolute error {error:.2f}"
    assert correlation >= 0.99, f"{form}: correlation {correlation:.3f}"


def test_the_check_fails_on_a_clipped_16_bit_picture():
    """What Pillow's convert("RGB") alone makes of a 16-bit gradient: almost white, as people were shown."""
    data, expected = sixteen_bit_gray()
    clipped = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)
    assert clipped.mean() > 240 and np.abs(clipped - expected).mean() > 50
