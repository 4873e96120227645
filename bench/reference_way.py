"""BENCHMARK-ONLY emulation of how Microsoft's reference code runs Phi-3-vision. Never used by the bot.

The reference ("remote code" of microsoft/Phi-3-vision-128k-instruct) cannot be imported here, so
``reference_way(model)`` temporarily makes our model do the same amount and kind of work the
reference does, on the same weights:

1. eager attention everywhere (the reference's CLIP tower is always eager, and its decoder falls
   back to eager when flash-attn is not installed);
2. every image's ``num_crops + 1`` tile slots go through CLIP, the all-zero padding slots included,
   in one call;
3. the whole CLIP tower runs (every layer plus ``post_layernorm``) with ``output_hidden_states``,
   and only ``hidden_states[-2]`` is kept, where our model builds only the layers it needs (so the
   emulation runs its last CLIP layer once more, for the cost of the reference's unused last layer).

The features of the real tiles then go through our own layout and projector code, so the output
equals our model's (up to the rounding of eager vs sdpa attention); ``engine.py`` checks that.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from inference.phi3v.image_processing_phi3v import CROP_SIZE
from inference.phi3v.modeling_phi3v import Phi3VForCausalLM, Phi3VImageEmbedding

REFERENCE_ATTENTION = "eager"


class _FeatureReplay:
    """Stands in for ``encode_tiles``: hands out precomputed tile features in the order they are asked for."""

    def __init__(self, features: torch.Tensor):
        self.features = features
        self.position = 0

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        count = tiles.shape[0]
        chunk = self.features[self.position : self.position + count]
        self.position += count
        return chunk


def _merge_2x2(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """[T, grid*grid, C] -> [T, grid/2, grid/2, 4C], the reference's 2x2 patch merge."""
    count, _, channels = patches.shape
    return (
        patches.reshape(count, grid // 2, 2, grid // 2, 2, channels)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(count, grid // 2, grid // 2, 4 * channels)
    )


def _encode_like_reference(
    embedding: Phi3VImageEmbedding, tiles: torch.Tensor, unused_layers: int
) -> torch.Tensor:
    """All tiles, the full CLIP tower with every hidden state kept, then the chosen layer without CLS."""
    outputs = embedding.img_processor(pixel_values=tiles, output_hidden_states=True)
    tower = embedding.img_processor
    hidden = outputs.last_hidden_state
    for _ in range(unused_layers):  # the reference computes these and throws them away
        hidden = tower.encoder.layers[-1](hidden, None)
    tower.post_layernorm(hidden[:, 0])
    return _merge_2x2(outputs.hidden_states[embedding.layers_to_run][:, 1:], embedding.patch_grid)


def _real_tile_counts(image_sizes: torch.Tensor) -> list[int]:
    return [(int(h) // CROP_SIZE) * (int(w) // CROP_SIZE) + 1 for h, w in image_sizes.tolist()]


def _reference_forward(
    embedding: Phi3VImageEmbedding, unused_layers: int, pixel_values: torch.Tensor, image_sizes: torch.Tensor
) -> torch.Tensor:
    dtype = embedding.img_projection[0].weight.dtype
    slots = pixel_values.shape[1]
    features = _encode_like_reference(embedding, pixel_values.flatten(0, 1).to(dtype), unused_layers)
    real = torch.cat(
        [features[i * slots : i * slots + count] for i, count in enumerate(_real_tile_counts(image_sizes))]
    )
    embedding.encode_tiles = _FeatureReplay(real)  # our layout code now receives the features above
    try:
        return type(embedding).forward(embedding, pixel_values, image_sizes)
    finally:
        del embedding.encode_tiles


@contextmanager
def reference_way(model: Phi3VForCausalLM) -> Iterator[None]:
    """Within this block ``model`` runs the reference's way; on exit it is restored."""
    embedding = model.model.vision_embed_tokens
    previous_attention = model.config._attn_implementation
    unused_layers = len(embedding.unused_vision_weights)  # CLIP layers the reference runs, we do not
    model.set_attn_implementation(REFERENCE_ATTENTION)
    embedding.forward = lambda pixel_values, image_sizes: _reference_forward(
        embedding, unused_layers, pixel_values, image_sizes
    )
    try:
        yield
    finally:
        del embedding.forward
        model.set_attn_implementation(previous_attention)


def tiles_encoded_by_reference(pixel_values: torch.Tensor) -> int:
    """The reference encodes every slot: images x (num_crops + 1)."""
    return pixel_values.shape[0] * pixel_values.shape[1]


def tiles_encoded_by_ours(image_sizes: torch.Tensor) -> int:
    return sum(_real_tile_counts(image_sizes))


__all__ = ["REFERENCE_ATTENTION", "reference_way", "tiles_encoded_by_ours", "tiles_encoded_by_reference"]
