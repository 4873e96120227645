"""Phi-3-vision's HD canvas: the size a picture is resized to, and its white padding to whole 336 px
tiles. Pure Pillow and arithmetic, so that image intake can reduce a picture to exactly what the model
reads without loading torch; the image processor (inference/phi3v) uses these same functions.

A padded canvas is its own canvas: resizing and padding it again changes nothing (a test checks every
size), which is what lets intake hand the processor a canvas it passes through untouched.
"""

from __future__ import annotations

import math

from PIL import Image

CROP_SIZE = 336
WHITE = (255, 255, 255)


def hd_canvas_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """Return the (width, height) of the resized image before padding, as the reference computes it."""
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * CROP_SIZE)
    # The reference computes 0 here for a strip thinner than 1:new_w and then fails; one pixel
    # keeps such an image usable (it is padded to a 336 px high row of tiles like any other).
    new_h = max(1, int(new_w / ratio))
    return (new_h, new_w) if transposed else (new_w, new_h)


def pad_to_tiles(image: Image.Image, *, transposed: bool) -> Image.Image:
    """An RGB image resized to its canvas, padded with white to whole tiles along its shorter side (the
    height, or the width where ``transposed``), centred as the reference centres it."""
    width, height = (image.height, image.width) if transposed else image.size
    target = int(math.ceil(height / CROP_SIZE) * CROP_SIZE)
    if target == height:
        return image
    offset = int((target - height) / 2)
    size, at = ((target, width), (offset, 0)) if transposed else ((width, target), (0, offset))
    canvas = Image.new("RGB", size, WHITE)
    canvas.paste(image, at)
    return canvas
