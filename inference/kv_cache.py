"""A KV cache that appends in place.

transformers' DynamicCache concatenates every new token onto the whole cache,
so each decoding step copies all cached keys and values: with a batch of long
multimodal prompts that is tens of GB of memory traffic per step. This cache
keeps spare room at the end of each layer's buffer and grows it in fixed
chunks, so a step writes one token per row and a full copy happens once per
``GROWTH_TOKENS`` steps. The spare room costs at most ``GROWTH_TOKENS`` tokens per row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, DynamicLayer

GROWTH_TOKENS = 256


class GrowingLayer(DynamicLayer):
    """One layer's keys and values, with spare room; ``keys`` and ``values`` view the filled part."""

    def __init__(self) -> None:
        super().__init__()
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    @classmethod
    def from_tensors(cls, keys: torch.Tensor, values: torch.Tensor) -> GrowingLayer:
        layer = cls()
        layer.update(keys, values)
        return layer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._key_buffer is None or end > self._key_buffer.shape[-2]:
            self._reserve(end, key_states, value_states)
        self._key_buffer[..., self.length : end, :].copy_(key_states)
        self._value_buffer[..., self.length : end, :].copy_(value_states)
        self.length = end
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _reserve(self, needed: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        capacity = needed + GROWTH_TOKENS
        new_keys = key_states.new_empty(*key_states.shape[:-2], capacity, key_states.shape[-1])
        new_values = value_states.new_empty(*value_states.shape[:-2], capacity, value_states.shape[-1])
        if self.length:
            new_keys[..., : self.length, :].copy_(self.keys)
            new_values[..., : self.length, :].copy_(self.values)
        self._key_buffer, self._value_buffer = new_keys, new_values

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        self._key_buffer = self._value_buffer = None
        super().reset()


class GrowingCache(Cache):
    """A cache of :class:`GrowingLayer`; empty (filled by the model's first forward) or built from tensors."""

    def __init__(self, tensors: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        if tensors is None:
            super().__init__(layer_class_to_replicate=GrowingLayer)
        else:
            super().__init__(layers=[GrowingLayer.from_tensors(k, v) for k, v in tensors])


LayerBuilder = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rebuild(cache: GrowingCache, build: LayerBuilder) -> GrowingCache:
    """A new cache made layer by layer with ``build(index, keys, values)``.

    Each old layer is freed as soon as its replacement exists, so the peak is one cache plus
    one layer, not two caches. The old cache is unusable afterwards, also if ``build`` fails.
    """
    layers = []
    for index, layer in enumerate(cache.layers):
        keys, values = build(index, layer.keys, layer.values)
        layer.reset()
        layers.append(GrowingLayer.from_tensors(keys, values))
        del keys, values
    new = GrowingCache()
    new.layers = layers
    return new
