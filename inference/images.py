"""Image intake shared by every way images come in (the bot, the command line tool). PIL only."""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from inference.errors import InvalidRequest
from inference.text import T, Text

WHITE = (255, 255, 255)
# Pillow format names we accept, decided by the file's content, never by its name.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
SUPPORTED_FORMATS = "PNG, JPEG, WEBP, GIF, BMP"
TOO_MANY_PIXELS = T("it has far too many pixels to open safely")
# Phi-3-vision never needs more than this on a side (num_crops=16 => 4x4 tiles of 336, with margin).
DRAFT_TARGET_SIDE = 2688
DEFAULT_MAX_PIXELS = 40_000_000


class UnreadableImage(InvalidRequest):
    """A file that cannot be used as an image; ``reason`` says why in plain words ("it is ...")."""

    def __init__(self, reason: Text) -> None:
        self.reason = reason
        super().__init__(reason)


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (the model was trained without alpha)."""
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
        raise UnreadableImage(TOO_MANY_PIXELS) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UnreadableImage(
            T("it is not an image I can read ({formats})", formats=SUPPORTED_FORMATS)
        ) from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise UnreadableImage(T("it has no pixels"))
        if width * height > max_pixels:
            raise UnreadableImage(
                T(
                    "it is {width}×{height} pixels; the limit is {limit:,} pixels in total",
                    width=width,
                    height=height,
                    limit=max_pixels,
                )
            )
        if image.format == "JPEG" and max(width, height) > DRAFT_TARGET_SIDE:
            scale = DRAFT_TARGET_SIDE / max(width, height)
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        try:
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
        except Image.DecompressionBombError:
            raise UnreadableImage(TOO_MANY_PIXELS) from None
        except (OSError, ValueError, SyntaxError, EOFError):
            raise UnreadableImage(T("the file is damaged or incomplete")) from None
        return flatten_to_rgb(upright)
