"""The in-place KV cache gives exactly what transformers' DynamicCache gives, across its growth steps."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from inference.kv_cache import GROWTH_TOKENS, GrowingCache, GrowingLayer, rebuild
from tests.inference.phi3v.test_modeling_phi3v import random_model, tiny_config


def greedy_logits(model, prompt: torch.Tensor, cache, steps: int) -> list[torch.Tensor]:
    logits = model(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1]
    seen = [logits]
    for step in range(steps):
        token = logits.argmax(-1, keepdim=True)
        position = torch.full((prompt.shape[0], 1), prompt.shape[1] + step)
        logits = model(input_ids=token, cache=cache, position_ids=position, use_cache=True).logits[:, -1]
        seen.append(logits)
    return seen


def test_growing_cache_matches_dynamic_cache_through_a_growth():
    model = random_model(tiny_config(original_max_position_embeddings=4096), seed=5)
    prompt = torch.randint(3, 500, (2, 20), generator=torch.Generator().manual_seed(5))
    # The prefill reserves room for 20 + GROWTH_TOKENS tokens; decoding past that must copy the cache
    # into a larger buffer, twice here, and still give DynamicCache's logits exactly.
    steps = 2 * GROWTH_TOKENS + 10
    with torch.no_grad():
        expected = greedy_logits(model, prompt, DynamicCache(), steps)
        cache = GrowingCache()
        capacities = []
        original_reserve = GrowingLayer._reserve

        def reserve(layer, needed, keys, values):
            if layer is cache.layers[0]:
                capacities.append(needed + GROWTH_TOKENS)
            original_reserve(layer, needed, keys, values)

        GrowingLayer._reserve = reserve
        try:
            got = greedy_logits(model, prompt, cache, steps)
        finally:
            GrowingLayer._reserve = original_reserve
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=0, rtol=0)
    assert capacities == [20 + GROWTH_TOKENS, 21 + 2 * GROWTH_TOKENS, 22 + 3 * GROWTH_TOKENS]
    assert cache.get_seq_length() == prompt.shape[1] + steps
    assert cache.layers[0].keys.shape[-2] == prompt.shape[1] + steps


def test_a_cache_rebuilt_from_tensors_continues_where_it_left_off():
    keys = torch.randn(1, 2, 5, 4)
    values = torch.randn(1, 2, 5, 4)
    cache = GrowingCache([(keys, values)])
    new_keys, new_values = cache.update(torch.ones(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), 0)
    assert torch.equal(new_keys[..., :5, :], keys) and torch.equal(new_keys[..., 5, :], torch.ones(1, 2, 4))
    assert torch.equal(new_values[..., :5, :], values) and cache.get_seq_length() == 6


def test_rebuild_frees_each_old_layer_as_it_goes():
    old = GrowingCache([(torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)) for _ in range(3)])
    seen_lengths = []

    def keep_first_row(index, keys, values):
        seen_lengths.append([layer.get_seq_length() for layer in old.layers])
        return keys[:1], values[:1]

    new = rebuild(old, keep_first_row)
    # when layer i is rebuilt, the layers before it are already freed
    assert seen_lengths == [[5, 5, 5], [0, 5, 5], [0, 0, 5]]
    assert [layer.keys.shape for layer in new.layers] == [torch.Size([1, 2, 5, 4])] * 3
