"""A preallocated KV cache in fixed-size blocks, read through per-request block tables (docs/kv-cache.md).

:class:`PagedStorage` holds every layer's keys and values in one tensor each, allocated once:
``[blocks × block_tokens, kv_heads, head_dim]`` (a flat run of token slots; block ``b`` holds slots
``b·block_tokens .. (b+1)·block_tokens − 1``). A request owns the blocks a
:class:`~inference.block_pool.BlockPool` gave it and nothing else; writing a token goes to its slot, so
a request joining or leaving never moves another request's keys and values.

For one forward pass, :class:`PagedCache` is the transformers ``Cache`` the model writes through: each
batch row is a :class:`RowView` (its blocks and how many tokens it already has), each layer's
``update`` writes the new tokens into their slots and returns every row's keys and values up to its
length, right-padded to the longest row; :func:`attention_mask` says which of those a query may see.
Pass positions explicitly (``start + i``): the cache does not keep them.

Not used by the runner yet (issue 9, step 2 of docs/kv-cache.md); the tests check it against the path
the runner uses today.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PagedStorage:
    """Every layer's keys and values for ``num_blocks`` blocks, allocated once."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_tokens: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.block_tokens = block_tokens
        shape = (num_blocks * block_tokens, kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def slots(self, blocks: Sequence[int], start: int, stop: int, device: torch.device) -> torch.Tensor:
        """The flat slot of each token position ``start .. stop − 1`` of a request holding ``blocks``."""
        positions = torch.arange(start, stop, device=device)
        table = torch.tensor(list(blocks), dtype=torch.long, device=device)
        return table[positions // self.block_tokens] * self.block_tokens + positions % self.block_tokens


@dataclass(frozen=True)
class RowView:
    """One batch row in one forward pass: the request's blocks and the tokens it already has."""

    blocks: tuple[int, ...]
    start: int


class PagedLayer(CacheLayerMixin):
    """One layer's view of the storage for one forward pass."""

    def __init__(self, storage: PagedStorage, index: int, rows: Sequence[RowView]) -> None:
        super().__init__()
        self.storage, self.index, self.rows = storage, index, list(rows)
        self.length = max((row.start for row in self.rows), default=0)
        self.is_initialized = True  # the storage exists already

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the storage was allocated up front."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write each row's new tokens into its slots; return every row's keys and values so far."""
        batch, _, queries, _ = key_states.shape
        device = key_states.device
        store_keys, store_values = self.storage.keys[self.index], self.storage.values[self.index]
        lengths = [row.start + queries for row in self.rows]
        longest = max(lengths)
        keys = key_states.new_zeros(batch, longest, *store_keys.shape[1:])
        values = value_states.new_zeros(batch, longest, *store_values.shape[1:])
        for b, row in enumerate(self.rows):
            new = self.storage.slots(row.blocks, row.start, lengths[b], device)
            store_keys[new] = key_states[b].transpose(0, 1)
            store_values[new] = value_states[b].transpose(0, 1)
            every = self.storage.slots(row.blocks, 0, lengths[b], device)
            keys[b, : lengths[b]] = store_keys[every]
            values[b, : lengths[b]] = store_values[every]
        self.length = longest
        self.keys, self.values = keys.transpose(1, 2), values.transpose(1, 2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1


class PagedCache(Cache):
    """The cache for one forward pass over ``rows``, writing into ``storage``."""

    def __init__(self, storage: PagedStorage, rows: Sequence[RowView]) -> None:
        super().__init__(layers=[PagedLayer(storage, i, rows) for i in range(len(storage.keys))])


def attention_mask(rows: Sequence[RowView], queries: int, device: torch.device | str) -> torch.Tensor:
    """Which cached token each query may see: its row's tokens up to itself (causal), never padding.

    A boolean ``[batch, 1, queries, longest]`` mask (True: attend), as transformers' sdpa attention
    takes a ready 4D mask.
    """
    longest = max(row.start for row in rows) + queries
    keys = torch.arange(longest, device=device)
    limits = torch.tensor([row.start for row in rows], device=device)[:, None] + torch.arange(
        queries, device=device
    )
    return (keys[None, None, :] <= limits[:, :, None]).unsqueeze(1)


def positions(rows: Sequence[RowView], queries: int, device: torch.device | str) -> torch.Tensor:
    """The position of every query of every row: ``start .. start + queries − 1``."""
    starts = torch.tensor([row.start for row in rows], device=device)[:, None]
    return starts + torch.arange(queries, device=device)
