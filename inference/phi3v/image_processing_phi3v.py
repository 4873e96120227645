"""Pixels only: Phi-3-vision's HD transform, crops and normalisation.

Each image becomes a padded "HD" canvas whose sides are multiples of 336 px
(at most ``num_crops`` tiles of 336x336), cut into tiles in row-major order,
preceded by one global 336x336 view of the whole canvas.

The arithmetic follows the published reference step for step so that the
tensors come out bit-identical (see tests/fixtures/phi3v-tiny): PIL bilinear
resize, white padding split top/bottom, uint8 -> float32 / 255, CLIP
mean/std, and a bicubic torch resize of the normalised canvas for the global
view. Unlike the reference, nothing goes through float64, the work per image
is a handful of vectorised tensor ops, and the number of real tiles is
returned so the model never encodes padding.

A byte has 256 values, so the normalisation is a table: each channel's 256
results, computed once with the reference's float32 operations, then looked
up per pixel (the same numbers, one pass instead of four). Tiles are written
straight into the output, and only padding tiles are zeroed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from inference.hd_canvas import CROP_SIZE, hd_canvas_size, pad_to_tiles

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Feature tokens per 336x336 tile after CLIP's 24x24 patch grid is merged 2x2 into 12x12.
TOKENS_PER_TILE = 144
TILE_GRID = 12


def num_image_tokens(height: int, width: int) -> int:
    """Placeholder tokens for one image whose padded HD canvas is ``height`` x ``width``.

    Sub-tile grid with one separator per row, then the ``glb_GN`` separator, then the
    12x12 global grid with one separator per row.
    """
    rows, cols = height // CROP_SIZE, width // CROP_SIZE
    return (rows * cols + 1) * TOKENS_PER_TILE + 1 + (rows + 1) * TILE_GRID


def hd_transform(image: Image.Image, num_crops: int) -> Image.Image:
    """Resize (keeping the aspect ratio) and pad with white to a canvas of whole 336 px tiles.

    A tall image is resized as the reference does it, transposed (Pillow resizes rows first, so the order
    shows in the last bit); the padding is the same either way.
    """
    transposed = image.width < image.height
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    image = image.resize(hd_canvas_size(image.width, image.height, num_crops), Image.Resampling.BILINEAR)
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    return pad_to_tiles(image, transposed=transposed)


class Phi3VImageProcessor(BaseImageProcessor):
    """Turns PIL images into ``pixel_values`` [N, num_crops+1, 3, 336, 336] and ``image_sizes`` [N, 2].

    Drops transparency the way the reference does (``convert("RGB")``); the bot flattens
    transparent images onto white before they get here.
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 16,
        image_mean: tuple[float, ...] = CLIP_MEAN,
        image_std: tuple[float, ...] = CLIP_STD,
        num_img_tokens: int = TOKENS_PER_TILE,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_crops < 1:
            raise ValueError(f"num_crops must be at least 1, got {num_crops}")
        self.num_crops = int(num_crops)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.num_img_tokens = num_img_tokens

    def _table(self) -> torch.Tensor:
        """[3, 256]: every byte value of each channel normalised with the reference's float32 operations."""
        values = torch.arange(256, dtype=torch.float32)[None].div(255)
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None]
        return values.sub(mean).div(std)

    def _normalise(self, image: Image.Image) -> torch.Tensor:
        """[3, H, W] float32: (pixel / 255 - mean) / std, looked up in :meth:`_table`."""
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        table = self._table()
        return torch.stack([table[channel][pixels[channel].long()] for channel in range(3)])

    def crops(
        self, image: Image.Image, out: torch.Tensor | None = None, num_crops: int | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image -> (tiles [1 + rows*cols, 3, 336, 336] with the global view first, (h, w)); written into
        the first tiles of ``out`` when given. ``num_crops`` overrides the processor's own for this image."""
        canvas = self._normalise(hd_transform(image.convert("RGB"), num_crops or self.num_crops))
        _, height, width = canvas.shape
        rows, cols = height // CROP_SIZE, width // CROP_SIZE
        if out is None:
            out = torch.empty(1 + rows * cols, 3, CROP_SIZE, CROP_SIZE)
        out[0] = torch.nn.functional.interpolate(
            canvas.unsqueeze(0), size=(CROP_SIZE, CROP_SIZE), mode="bicubic"
        )[0]
        out[1 : 1 + rows * cols].view(rows, cols, 3, CROP_SIZE, CROP_SIZE).copy_(
            canvas.view(3, rows, CROP_SIZE, cols, CROP_SIZE).permute(1, 3, 0, 2, 4)
        )
        return out[: 1 + rows * cols], (height, width)

    def __call__(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self, images, return_tensors: str | None = "pt", num_crops: int | None = None, **kwargs
    ) -> BatchFeature:
        """``num_crops`` reads these images at that many crops instead of :attr:`num_crops`."""
        crops = int(num_crops or self.num_crops)
        if crops < 1:
            raise ValueError(f"num_crops must be at least 1, got {crops}")
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("preprocess() needs at least one image")
        for image in images:
            if not isinstance(image, Image.Image):
                raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        pixel_values = torch.empty(len(images), crops + 1, 3, CROP_SIZE, CROP_SIZE)
        sizes = []
        for index, image in enumerate(images):
            tiles, size = self.crops(image, out=pixel_values[index], num_crops=crops)
            pixel_values[index, tiles.shape[0] :] = 0  # padding tiles: zeros, as the reference has them
            sizes.append(size)
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(sizes, dtype=torch.long),
            "num_img_tokens": [num_image_tokens(h, w) for h, w in sizes],
        }
        return BatchFeature(data=data, tensor_type=None)


__all__ = ["Phi3VImageProcessor", "hd_canvas_size", "hd_transform", "num_image_tokens"]
