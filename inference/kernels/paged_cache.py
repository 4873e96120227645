"""The preallocated KV cache in fixed-size blocks, and the attention hook that reads it (docs/kv-cache.md).

:class:`PagedStorage` holds every layer's keys and values, allocated once at start-up:
``[blocks, block_tokens, kv_heads, head_dim]`` per layer. A request owns the blocks a
:class:`~inference.serving.block_pool.BlockPool` gave it and nothing else, so a request joining or leaving
never moves another request's keys and values.

One forward pass of the runner is *packed*: every row's new tokens (one for a row that is decoding, a
chunk of its prompt for a row being prefilled) lie side by side in a batch of one sequence, and a
:class:`PagedBatch` says where each row's tokens start (``cu_seq_q``), how many keys each row has once
they are written (``lengths``), where each new key goes (``slots``), which blocks each row holds
(``block_table``) and which :class:`AttentionBackend` reads them. :func:`paged_attention`, the attention
transformers calls once :func:`register_attention` made it known, writes the new keys and values into their
slots and hands the queries to that backend, which lets every query see its own row's keys only, up to
itself. The backends, and the start-up check that chooses one, are in
:mod:`inference.kernels.attention_backends`.
"""

from __future__ import annotations

import functools
import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from transformers import AttentionInterface

ATTENTION_NAME = "phi3v_paged"
GIB = 1024**3


class AttentionBackend(ABC):
    """One way to attend over the paged cache: what it is called, whether it exists on a device, and the
    attention itself. Every backend computes the same numbers as the plain one, within a dtype's tolerance
    (checked at start-up before it is used)."""

    name: ClassVar[str]
    text: ClassVar[str]  # how it reads the keys, for the owner's log
    graph_safe: ClassVar[bool]  # its launches depend only on shapes, so a CUDA graph can capture it

    @abstractmethod
    def runs_here(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether it exists for this device and dtype (the start-up check then tries it)."""

    @abstractmethod
    def attend(self, q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
        """``q`` ``[tokens, heads, head_dim]`` against the keys already written; the same shape out."""

    def __repr__(self) -> str:
        return f"<{self.name} attention>"


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
        shape = (num_blocks, block_tokens, kv_heads, head_dim)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for _ in range(num_layers):  # one layer at a time: a failure leaves nothing half-made behind
            self.keys.append(torch.zeros(shape, dtype=dtype, device=device))
            self.values.append(torch.zeros(shape, dtype=dtype, device=device))

    @staticmethod
    def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Keys and values of one token in every layer."""
        return 2 * num_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8

    def write(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put ``keys``/``values`` ``[tokens, kv_heads, head_dim]`` into the flat slots ``slots``."""
        self.keys[layer].view(-1, *keys.shape[1:]).index_copy_(0, slots, keys)
        self.values[layer].view(-1, *values.shape[1:]).index_copy_(0, slots, values)


@dataclass
class PagedBatch:
    """The layout of one packed forward pass (tensors on the model's device, int32 unless noted).

    ``q_lengths``/``k_lengths`` repeat ``cu_seq_q``/``lengths`` as Python ints for the plain kernel.
    """

    storage: PagedStorage
    slots: torch.Tensor  # [tokens] int64: the flat cache slot of each new token
    cu_seq_q: torch.Tensor  # [rows + 1]: where each row's tokens start in the packed sequence
    cu_seq_k: torch.Tensor  # [rows + 1]: the running sum of ``lengths``
    lengths: torch.Tensor  # [rows]: keys of each row once this pass has written its new ones
    block_table: torch.Tensor  # [rows, blocks per row]: the blocks each row holds, in token order
    q_lengths: list[int]
    k_lengths: list[int]
    backend: AttentionBackend  # the kernel that reads the keys (chosen at start-up)
    sliding_window: int | None = None  # keys further back than this are not seen (the model's config)
    causal_bias: bool = True  # a prompt's later chunks attend without a mask (see attend_at_end)

    @property
    def max_q(self) -> int:
        return max(self.q_lengths)

    @property
    def max_k(self) -> int:
        return max(self.k_lengths)

    @functools.cached_property
    def single_queries(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """The rows that decode one token in a pass that also holds prompt chunks, once per pass (not per
        layer): their row indices, where their query lies in the packed sequence, and the longest of them."""
        starts = [0, *itertools.accumulate(self.q_lengths)]
        singles = [row for row, count in enumerate(self.q_lengths) if count == 1]
        if not singles:
            return None
        device = self.lengths.device
        rows = torch.tensor(singles, device=device)
        at = torch.tensor([starts[row] for row in singles], device=device)
        return rows, at, max(self.k_lengths[row] for row in singles)


def block_table_tensor(tables: Sequence[Sequence[int]], width: int, fill: int = 0) -> torch.Tensor:
    """Each row's blocks, padded to ``width`` with ``fill``: an int32 ``[rows, width]`` tensor on the CPU."""
    table = torch.full((len(tables), width), fill, dtype=torch.int32)
    for index, blocks in enumerate(tables):
        table[index, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
    return table


def slots_of(table: Sequence[int], start: int, stop: int, block_tokens: int) -> list[int]:
    """The flat cache slot of each token position ``start .. stop − 1`` of a row holding ``table``."""
    return [table[p // block_tokens] * block_tokens + p % block_tokens for p in range(start, stop)]


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    paged_batch: PagedBatch | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention for a packed pass: ``query``/``key``/``value`` are ``[1, heads, tokens, head_dim]``."""
    if paged_batch is None:
        raise RuntimeError(f"The {ATTENTION_NAME!r} attention needs a paged_batch (the runner passes it)")
    batch = paged_batch
    q = query[0].transpose(0, 1)  # [tokens, heads, head_dim]
    layer = cast(int, module.layer_idx)
    batch.storage.write(layer, batch.slots, key[0].transpose(0, 1), value[0].transpose(0, 1))
    keys, values = batch.storage.keys[layer], batch.storage.values[layer]
    out = batch.backend.attend(q, keys, values, batch, scaling)
    return out.unsqueeze(0), None  # [1, tokens, heads, head_dim]


def register_attention() -> str:
    """Make :func:`paged_attention` known to transformers (once more does no harm); returns its name."""
    AttentionInterface.register(ATTENTION_NAME, paged_attention)
    return ATTENTION_NAME
