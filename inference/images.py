"""Image intake shared by every way images come in (the bot, the command line tool). Pillow and NumPy."""

from __future__ import annotations

import base64
import contextlib
import io
import math
import struct
import warnings
from collections.abc import Callable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from inference.errors import ImageProblem, UnreadableImage
from inference.hd_canvas import hd_canvas_size, pad_to_tiles

WHITE = (255, 255, 255)
# Pillow format names we accept, decided by the file's content, never by its name.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
SUPPORTED_FORMATS = (
    "PNG, JPEG, WEBP, GIF, BMP, PDF, MP4, WEBM, MOV"  # pictures, and the files inference.media reads
)
# Phi-3-vision never needs more than this on a side (num_crops=16 => 4x4 tiles of 336, with margin).
DRAFT_TARGET_SIDE = 2688
DEFAULT_MAX_PIXELS = 40_000_000
# The most crops the model reads of one picture (the setting's ceiling): where a model server decides its
# own crops, a picture is kept at the size this many would use.
MAX_CROPS = 16
# Pixels flattened at a time while a large picture is reduced: each band's copies stay a few megabytes,
# whatever the picture's mode, so no conversion ever copies the whole picture.
BAND_PIXELS = 1 << 20

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# EXIF orientation -> the transposition that makes the picture upright (the EXIF standard's table).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
QUARTER_TURNS = (5, 6, 7, 8)  # orientations that swap width and height


def eight_bit_levels(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """How to bring ``image``, or any band of it, to 8-bit ``L`` when it has more than 8 bits a value (a
    16-bit PNG opens as ``I;16`` or ``I``; ``F`` is float), its range scaled as a viewer shows it (Pillow's
    own ``convert`` clips every value above 255, which turns a 16-bit picture almost white). The scale is
    decided once from the whole picture; other modes are returned as they are.

    16 bits: ``(v + 128) // 257`` in integers, which equals ``rint(v * 255 / 65535)`` for every value.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        return lambda part: Image.fromarray(
            ((np.asarray(part).astype(np.uint32) + 128) // 257).astype(np.uint8), "L"
        )
    if image.mode not in ("I", "F"):
        return lambda part: part
    top = float(image.getextrema()[1])  # type: ignore[arg-type]  # one band: (low, high)
    if image.mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0  # 0-1 floats, else already 0-255
    else:  # signed 32-bit integers: a 16-bit range as Pillow opens 16-bit PNGs, or the whole positive range
        scale = 1.0 if top <= 255 else 255 / 65535 if top <= 65535 else 255 / (2**31 - 1)
    return lambda part: Image.fromarray(
        np.clip(np.rint(np.asarray(part).astype(np.float64) * scale), 0, 255).astype(np.uint8), "L"
    )


def to_eight_bits(image: Image.Image) -> Image.Image:
    """:func:`eight_bit_levels` applied to the whole image."""
    return eight_bit_levels(image)(image)


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (the model was trained without alpha), and values of
    more than 8 bits scaled, not clipped (:func:`to_eight_bits`)."""
    return _flattened(to_eight_bits(image)).convert("RGB")


def _flattened(image: Image.Image) -> Image.Image:
    """8-bit pixels, transparency composited onto white: ``L`` for a grey picture (its three channels would be
    equal, so every later step gives the same bytes in ``L``), ``RGB`` for the rest."""
    if image.mode in ("1", "L"):
        return image.convert("L")
    if image.mode == "LA":
        background = Image.new("L", image.size, 255)
        background.paste(image.getchannel("L"), mask=image.getchannel("A"))
        return background
    has_alpha = image.mode in ("RGBA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def reduce_for_model(image: Image.Image, size: tuple[int, int], *, rows_first: bool) -> Image.Image:
    """``image`` flattened (:func:`flatten_to_rgb`) and resized to ``size`` by Pillow's bilinear filter,
    without ever holding a full-size copy: bands of it are flattened and resized along one axis, then the
    stripe they make is resized along the other. Pillow resizes rows, then columns, so the result is the
    bytes of ``flatten_to_rgb(image).resize(size)`` where ``rows_first`` (a transposed resize where not).
    """
    width, height = image.size
    target_w, target_h = size
    levels = eight_bit_levels(image)
    if rows_first:
        step = max(1, BAND_PIXELS // width)
        bands = [(0, top, width, min(height, top + step)) for top in range(0, height, step)]
        stripe_size = (target_w, height)
    else:
        step = max(1, BAND_PIXELS // height)
        bands = [(left, 0, min(width, left + step), height) for left in range(0, width, step)]
        stripe_size = (width, target_h)
    stripe: Image.Image | None = None
    for left, top, right, bottom in bands:
        band_size = (target_w, bottom - top) if rows_first else (right - left, target_h)
        piece = _flattened(levels(image.crop((left, top, right, bottom)))).resize(
            band_size, Image.Resampling.BILINEAR
        )
        if stripe is None:
            stripe = Image.new(piece.mode, stripe_size)
        stripe.paste(piece, (left, top))  # a row band starts at the left edge, a column band at the top
    assert stripe is not None  # a picture has at least one pixel
    return stripe.resize(size, Image.Resampling.BILINEAR).convert("RGB")


def decode_image(data: bytes, *, max_pixels: int, num_crops: int | None = None) -> Image.Image:
    """Turn file bytes into an upright RGB image of at most what the model reads, or raise
    :class:`UnreadableImage` saying why.

    The format is sniffed from the content (allow-list only), the pixel count is checked from the header
    before anything is decoded, large JPEGs are decoded at a reduced scale, EXIF orientation is applied and
    transparency is flattened onto white. Animated images give their first frame here;
    :func:`inference.media.read_file`, which every way in uses, reads animations, PDFs and videos.

    A picture larger than the model's canvas for ``num_crops`` crops is reduced to that canvas right after
    decoding (:func:`reduce_for_model`), padded to whole tiles: exactly the pixels the image processor
    would make of it, which it then passes through untouched. With ``num_crops`` None (a model server picks
    its own) it is reduced to the canvas of :data:`MAX_CROPS` crops, unpadded. Decoding then holds the
    decoded picture and a few megabytes, whatever its mode.
    """
    with open_image(data, max_pixels=max_pixels) as image:
        return decode_opened(image, num_crops)


def decode_opened(image: Image.Image, num_crops: int | None) -> Image.Image:
    """An :func:`open_image` picture's first frame decoded, as :func:`for_model` gives it."""
    with decoding():
        image.seek(0)
        image.load()
        return for_model(image, num_crops)


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """The picture in ``data`` opened (its header read, nothing decoded), or :class:`UnreadableImage`: the
    format sniffed from the content (allow-list only), the pixel count checked, a large JPEG set to decode
    at a reduced scale."""
    if not data:
        raise UnreadableImage(ImageProblem.EMPTY)
    try:
        with warnings.catch_warnings():  # our own pixel limit, below, decides; no warning in the log
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise UnreadableImage(ImageProblem.DECOMPRESSION_BOMB) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UnreadableImage(ImageProblem.NOT_AN_IMAGE, formats=SUPPORTED_FORMATS) from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise UnreadableImage(ImageProblem.NO_PIXELS)
    if width * height > max_pixels:
        image.close()
        raise UnreadableImage(ImageProblem.TOO_MANY_PIXELS, width=width, height=height, limit=max_pixels)
    if image.format == "JPEG" and max(width, height) > DRAFT_TARGET_SIDE:
        scale = DRAFT_TARGET_SIDE / max(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    return image


@contextlib.contextmanager
def decoding() -> Iterator[None]:
    """Pillow's failures while decoding pixels, as :class:`UnreadableImage`."""
    try:
        yield
    except Image.DecompressionBombError:
        raise UnreadableImage(ImageProblem.DECOMPRESSION_BOMB) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error):  # Pillow's plugins raise each of these
        raise UnreadableImage(ImageProblem.DAMAGED) from None


def for_model(image: Image.Image, num_crops: int | None) -> Image.Image:
    """A decoded picture upright, flattened and no larger than the model reads at ``num_crops`` crops (padded
    to whole tiles), or than :data:`MAX_CROPS` would where ``num_crops`` is None (unpadded)."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    turned = orientation in QUARTER_TURNS
    upright_w, upright_h = (image.height, image.width) if turned else image.size
    canvas_w, canvas_h = hd_canvas_size(upright_w, upright_h, num_crops or MAX_CROPS)
    if canvas_w * canvas_h >= upright_w * upright_h:  # the model reads it at this size or larger
        return flatten_to_rgb(ImageOps.exif_transpose(image))
    # The reference resizes the upright picture rows first where it is wide, transposed where tall.
    size = (canvas_h, canvas_w) if turned else (canvas_w, canvas_h)
    reduced = reduce_for_model(image, size, rows_first=(upright_w >= upright_h) != turned)
    if orientation in UPRIGHT:
        reduced = reduced.transpose(UPRIGHT[orientation])
    if num_crops is None:
        return reduced
    return pad_to_tiles(reduced, transposed=reduced.width < reduced.height)


DATA_URL_FORMATS = ("auto", "png", "jpeg")
LARGE_IMAGE_PIXELS = 1_000_000  # with "auto", larger pictures travel as JPEG (quality 95) rather than PNG
JPEG_QUALITY = 95


def data_url(image: Image.Image, image_format: str = "auto") -> str:
    """One image as a ``data:`` URL (for a model server): PNG, or JPEG quality 95 for large photos."""
    fmt = image_format
    if fmt == "auto":
        fmt = "jpeg" if image.width * image.height > LARGE_IMAGE_PIXELS else "png"
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return f"data:image/{fmt};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
