"""A large picture is reduced right after decoding, to exactly what the image processor would make of it.

The reference here is the long way, written out as the processor's callers did it before: the whole picture
upright, flattened onto white at full size (16-bit values scaled through float64), then the processor's
own HD transform. The reduced picture must be that canvas byte for byte, and the processor must pass it
through untouched.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from inference import images
from inference.hd_canvas import CROP_SIZE, hd_canvas_size, pad_to_tiles
from inference.images import MAX_CROPS, decode_image
from inference.phi3v.image_processing_phi3v import hd_transform

LIMIT = 40_000_000


def reference_rgb(image: Image.Image) -> Image.Image:
    """The picture as a viewer shows it, the long way: full size, float64 for 16 bits, RGBA for alpha."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.rint(values * 255 / 65535), 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def noisy(width: int, height: int, channels: int, dtype=np.uint8, top: int = 255) -> np.ndarray:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 3 + y * 5) % (top + 1)
    noise = rng.integers(0, top + 1, size=(height, width, channels))
    return ((base[..., None] + noise) % (top + 1)).astype(dtype)


def picture(mode: str, width: int, height: int) -> Image.Image:
    if mode == "RGB":
        return Image.fromarray(noisy(width, height, 3), "RGB")
    if mode == "RGBA":
        return Image.fromarray(noisy(width, height, 4), "RGBA")
    if mode == "L":
        return Image.fromarray(noisy(width, height, 1)[..., 0], "L")
    if mode == "LA":
        return Image.fromarray(noisy(width, height, 2), "LA")
    if mode == "I;16":
        return Image.fromarray(noisy(width, height, 1, dtype=np.uint16, top=65535)[..., 0])
    if mode == "P":  # a palette with one transparent entry
        image = Image.fromarray(noisy(width, height, 3), "RGB").quantize(64)
        image.info["transparency"] = 5
        return image
    if mode == "1":
        return Image.fromarray(noisy(width, height, 1)[..., 0] > 127)
    raise AssertionError(mode)


def png(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1, **options)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "I;16", "P", "1"])
@pytest.mark.parametrize(("width", "height"), [(1500, 1100), (700, 1900)])  # wide and tall
@pytest.mark.parametrize("num_crops", [4, 16])
def test_a_large_picture_is_reduced_to_the_processors_canvas_byte_for_byte(mode, width, height, num_crops):
    data = png(picture(mode, width, height))
    reduced = decode_image(data, max_pixels=LIMIT, num_crops=num_crops)
    expected = hd_transform(reference_rgb(Image.open(io.BytesIO(data))), num_crops)
    assert reduced.mode == "RGB" and reduced.size == expected.size
    assert reduced.tobytes() == expected.tobytes()
    assert hd_transform(reduced, num_crops).tobytes() == reduced.tobytes()  # the processor passes it through


def test_bands_of_any_height_give_the_same_bytes(monkeypatch):
    data = png(picture("RGBA", 1500, 1100))
    whole = decode_image(data, max_pixels=LIMIT, num_crops=4)
    monkeypatch.setattr(images, "BAND_PIXELS", 10_007)  # a few rows a band, the last one short
    assert decode_image(data, max_pixels=LIMIT, num_crops=4).tobytes() == whole.tobytes()


def test_a_picture_the_model_reads_at_full_size_or_larger_is_left_at_its_size():
    data = png(picture("RGBA", 600, 400))
    image = decode_image(data, max_pixels=LIMIT, num_crops=16)
    assert image.size == (600, 400)
    assert image.tobytes() == reference_rgb(Image.open(io.BytesIO(data))).tobytes()


def test_without_a_crop_count_a_picture_is_kept_at_the_largest_canvas_unpadded():
    image = decode_image(png(picture("RGB", 3000, 2000)), max_pixels=LIMIT)
    assert image.size == hd_canvas_size(3000, 2000, MAX_CROPS)
    assert image.size[1] % CROP_SIZE != 0  # not padded: a model server pads for its own crop count


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_rotated_picture_is_reduced_upright_close_to_the_long_way(orientation):
    upright = picture("RGB", 1500, 1000)
    turns = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(turns[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = png(stored, exif=exif)
    reduced = decode_image(data, max_pixels=LIMIT, num_crops=4)
    expected = hd_transform(reference_rgb(Image.open(io.BytesIO(data))), 4)
    assert reduced.size == expected.size
    difference = np.abs(np.asarray(reduced, np.int16) - np.asarray(expected, np.int16))
    # Pillow rounds between its two passes, which a quarter turn puts in the other order
    assert difference.max() <= 1


def test_the_padded_canvas_is_its_own_canvas_for_every_size():
    for num_crops in (1, 4, 9, 16):
        for width in range(1, 6001, 37):
            for height in range(1, 6001, 53):
                canvas_w, canvas_h = hd_canvas_size(width, height, num_crops)
                tile = lambda side: -(-side // CROP_SIZE) * CROP_SIZE  # noqa: E731
                padded = (canvas_w, tile(canvas_h)) if width >= height else (tile(canvas_w), canvas_h)
                assert hd_canvas_size(*padded, num_crops) == padded, (width, height, num_crops)


def test_padding_a_canvas_that_needs_none_returns_it():
    image = Image.new("RGB", (672, 336))
    assert pad_to_tiles(image, transposed=False) is image
