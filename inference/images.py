"""Image intake shared by every way images come in (the bot, the command line tool). Pillow and NumPy."""

from __future__ import annotations

import base64
import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inference.errors import ImageProblem, UnreadableImage

WHITE = (255, 255, 255)
# Pillow format names we accept, decided by the file's content, never by its name.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
SUPPORTED_FORMATS = "PNG, JPEG, WEBP, GIF, BMP"
# Phi-3-vision never needs more than this on a side (num_crops=16 => 4x4 tiles of 336, with margin).
DRAFT_TARGET_SIDE = 2688
DEFAULT_MAX_PIXELS = 40_000_000


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_eight_bits(image: Image.Image) -> Image.Image:
    """A grayscale image of more than 8 bits a value (a 16-bit PNG opens as ``I;16`` or ``I``; ``F`` is
    float) as 8-bit ``L``, its range scaled as a viewer shows it. Pillow's own ``convert`` clips every value
    above 255, which turns a 16-bit picture almost white. Other modes are returned as they are."""
    if image.mode not in (*SIXTEEN_BIT_MODES, "I", "F"):
        return image
    values = np.asarray(image).astype(np.float64)
    if image.mode in SIXTEEN_BIT_MODES:
        scale = 255 / 65535
    elif image.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0  # 0-1 floats, else already 0-255
    else:  # signed 32-bit integers: a 16-bit range as Pillow opens 16-bit PNGs, or the whole positive range
        top = values.max() if values.size else 0
        scale = 1.0 if top <= 255 else 255 / 65535 if top <= 65535 else 255 / (2**31 - 1)
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (the model was trained without alpha), and values of
    more than 8 bits scaled, not clipped (:func:`to_eight_bits`)."""
    image = to_eight_bits(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Turn file bytes into an upright RGB image, or raise :class:`UnreadableImage` saying why.

    The format is sniffed from the content (allow-list only), the pixel count is
    checked from the header before anything is decoded, large JPEGs are decoded
    at a reduced scale, EXIF orientation is applied and transparency is
    flattened onto white. Animated images give their first frame.
    """
    try:
        with warnings.catch_warnings():  # our own pixel limit, below, decides; no warning in the log
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise UnreadableImage(ImageProblem.DECOMPRESSION_BOMB) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UnreadableImage(ImageProblem.NOT_AN_IMAGE, formats=SUPPORTED_FORMATS) from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise UnreadableImage(ImageProblem.NO_PIXELS)
        if width * height > max_pixels:
            raise UnreadableImage(ImageProblem.TOO_MANY_PIXELS, width=width, height=height, limit=max_pixels)
        if image.format == "JPEG" and max(width, height) > DRAFT_TARGET_SIDE:
            scale = DRAFT_TARGET_SIDE / max(width, height)
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        try:
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
        except Image.DecompressionBombError:
            raise UnreadableImage(ImageProblem.DECOMPRESSION_BOMB) from None
        except (OSError, ValueError, SyntaxError, EOFError):
            raise UnreadableImage(ImageProblem.DAMAGED) from None
        return flatten_to_rgb(upright)


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
