"""No image size reaches the generic error: every width and height from 1 to 20,000 px either works
all the way to the model's tiles or is refused up front with a reason that names the file.

Property-style: a fixed-seed sample of sizes, log-uniform per side (so thin strips, tiny images and
huge ones all come up), plus the edges. The full path is taken: file bytes -> ``decode_image`` (the
bot's intake) -> the Phi-3-vision image processor -> the number of image tokens.
"""

from __future__ import annotations

import io
import math
import random

import pytest
from PIL import Image

from bot.errors import ImageRejected
from bot.images import decode_image
from bot.settings import Settings
from inference.phi3v.image_processing_phi3v import CROP_SIZE, Phi3VImageProcessor
from tests.conftest import png_header_only

MAX_SIDE = 20_000
MAX_PIXELS = Settings().max_image_pixels
ENCODE_LIMIT = 2_000_000  # pixels: larger ones skip the PNG round trip (same code path, much faster)
EDGES = [
    (1, 1),
    (1, 2),
    (2, 1),
    (1, MAX_SIDE),
    (MAX_SIDE, 1),
    (2, MAX_SIDE),
    (MAX_SIDE, 2),
    (1, 336),
    (336, 1),
    (1, 5376),
    (5376, 1),
    (1, 5377),
    (5377, 1),
    (3, 16_001),
    (MAX_SIDE, 2_000),
    (2_000, MAX_SIDE),
    (MAX_SIDE, MAX_SIDE),
    (6_324, 6_325),
]


def sample_sizes(count: int, seed: int = 20261129) -> list[tuple[int, int]]:
    rng = random.Random(seed)

    def side() -> int:
        return min(MAX_SIDE, max(1, round(math.exp(rng.uniform(0, math.log(MAX_SIDE))))))

    return [(side(), side()) for _ in range(count)]


def intake(width: int, height: int) -> Image.Image:
    """What the bot would hand to the engine for an upload of this size (or ImageRejected)."""
    if width * height > MAX_PIXELS:  # refused from the header, so a header is all we need to make
        return decode_image(png_header_only(width, height), "big.png", max_pixels=MAX_PIXELS)
    if width * height > ENCODE_LIMIT:
        return Image.new("RGB", (width, height), (40, 90, 200))
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(buffer, format="PNG", compress_level=1)
    return decode_image(buffer.getvalue(), "upload.png", max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(("num_crops", "samples"), [(16, 100), (4, 0)])
def test_every_size_works_or_is_refused_with_a_named_reason(num_crops, samples):
    processor = Phi3VImageProcessor(num_crops=num_crops)
    outcomes = {"processed": 0, "refused": 0}
    for width, height in EDGES + sample_sizes(samples):
        try:
            image = intake(width, height)
        except ImageRejected as refused:
            assert "big.png" in str(refused) and "pixels" in str(refused.reason), (width, height)
            outcomes["refused"] += 1
            continue
        features = processor([image])
        rows, cols = (int(side) // CROP_SIZE for side in features["image_sizes"][0])
        assert 1 <= rows * cols <= num_crops, (width, height, rows, cols)
        assert features["num_img_tokens"][0] > 0
        outcomes["processed"] += 1
    assert outcomes["processed"] > 0.6 * (len(EDGES) + samples) and outcomes["refused"] > 0  # both happen


def test_a_one_pixel_strip_was_what_broke_the_reference_arithmetic():
    # 20,000 x 1: the reference computes a height of int(5376 / 20000) = 0 and fails to resize.
    features = Phi3VImageProcessor(num_crops=16)([Image.new("RGB", (MAX_SIDE, 1))])
    assert features["image_sizes"].tolist() == [[CROP_SIZE, 16 * CROP_SIZE]]
