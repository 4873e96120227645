"""The preallocated KV cache in fixed-size blocks, and the attention that reads it (docs/kv-cache.md).

:class:`PagedStorage` holds every layer's keys and values, allocated once at start-up:
``[blocks, block_tokens, kv_heads, head_dim]`` per layer. A request owns the blocks a
:class:`~inference.block_pool.BlockPool` gave it and nothing else, so a request joining or leaving never
moves another request's keys and values.

One forward pass of the runner is *packed*: every row's new tokens (one for a row that is decoding, a
chunk of its prompt for a row being prefilled) lie side by side in a batch of one sequence, and a
:class:`PagedBatch` says where each row's tokens start (``cu_seq_q``), how many keys each row has once
they are written (``lengths``), where each new key goes (``slots``) and which blocks each row holds
(``block_table``). :func:`paged_attention`, registered with transformers as :data:`ATTENTION_NAME`,
writes the new keys and values into their slots and lets every query see its own row's keys only,
up to itself. Nothing is gathered into a padded copy on the GPU: the fused kernel (PyTorch's
``varlen_attn``, FlashAttention with a block table) reads the blocks where they are. Elsewhere (CPU,
Apple, GPUs older than Ampere, float32) a plain kernel gathers one row at a time and runs sdpa: exact,
and the reference the tests compare against.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

log = logging.getLogger(__name__)

ATTENTION_NAME = "phi3v_paged"
GIB = 1024**3


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
    fused: bool  # use the fused kernel (CUDA, Ampere or newer, bf16/fp16)
    sliding_window: int | None = None  # keys further back than this are not seen (the model's config)

    _gathered: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    @property
    def max_q(self) -> int:
        return max(self.q_lengths)

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For the plain kernel, once per pass: each row's key slots padded to the longest row
        ``[rows, longest]``, and the mask of the real ones ``[rows, 1, 1, longest]`` (also the window)."""
        if self._gathered is None:
            block_tokens = self.storage.block_tokens
            longest = self.max_k
            blocks = -(-longest // block_tokens)
            offsets = torch.arange(block_tokens, device=self.block_table.device)
            table = self.block_table[:, :blocks].long()
            slots = (table[:, :, None] * block_tokens + offsets).flatten(1)[:, :longest]
            at = torch.arange(longest, device=slots.device)
            lengths = self.lengths.long()[:, None]
            mask = at < lengths
            if self.sliding_window:
                mask &= at >= lengths - self.sliding_window
            self._gathered = slots, mask[:, None, None, :]
        return self._gathered

    @property
    def max_k(self) -> int:
        return max(self.k_lengths)


def slots_of(table: Sequence[int], start: int, stop: int, block_tokens: int) -> list[int]:
    """The flat cache slot of each token position ``start .. stop − 1`` of a row holding ``table``."""
    return [table[p // block_tokens] * block_tokens + p % block_tokens for p in range(start, stop)]


def fused_kernel_available(device: torch.device, dtype: torch.dtype) -> bool:
    """True where PyTorch's FlashAttention with a block table runs: CUDA, compute capability 8+, bf16/fp16."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (PyTorch 2.10 and newer)
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


@functools.cache
def fused_kernel_problem(
    device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int
) -> str | None:
    """Run the fused kernel on a small random pass and compare it with the plain kernel.

    None when they agree; else what went wrong, in a line for the log. It runs once per shape (a few
    milliseconds), so that a kernel PyTorch offers but this GPU, driver or head size cannot run is found at
    start-up rather than by every request.
    """
    block_tokens = 256
    storage = PagedStorage(
        num_layers=1,
        num_blocks=4,
        block_tokens=block_tokens,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        device=device,
    )
    generator = torch.Generator(device=device).manual_seed(0)
    # Row 0 holds blocks 2 then 0 and prefills 300 tokens; row 1 holds block 3, has 40 and adds 1.
    q_lengths, k_lengths, tables = [300, 1], [300, 41], [[2, 0], [3, 1]]
    slots = slots_of(tables[0], 0, 300, block_tokens) + slots_of(tables[1], 0, 41, block_tokens)

    def on(values, kind=torch.int32):
        return torch.tensor(values, dtype=kind, device=device)

    batch = PagedBatch(
        storage=storage,
        slots=on(slots[:300] + slots[-1:], torch.long),
        cu_seq_q=on([0, 300, 301]),
        cu_seq_k=on([0, 300, 341]),
        lengths=on(k_lengths),
        block_table=on(tables),
        q_lengths=q_lengths,
        k_lengths=k_lengths,
        fused=True,
    )
    keys, values = (
        torch.randn(len(slots), kv_heads, head_dim, generator=generator, device=device).to(dtype)
        for _ in range(2)
    )
    storage.write(0, on(slots, torch.long), keys, values)
    query = torch.randn(301, heads, head_dim, generator=generator, device=device).to(dtype)
    try:
        fused = _fused(query, storage.keys[0], storage.values[0], batch, head_dim**-0.5).float()
    except Exception as error:  # any failure means: do not use it
        return f"{type(error).__name__}: {error}"[:300]
    plain = _plain(query, storage.keys[0], storage.values[0], batch, head_dim**-0.5).float()
    difference = float((fused - plain).abs().max())
    if not difference <= 0.02 * float(plain.abs().max()):
        return f"it differs from the plain kernel by {difference:.3g}"
    return None


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
    batch.storage.write(module.layer_idx, batch.slots, key[0].transpose(0, 1), value[0].transpose(0, 1))
    keys, values = batch.storage.keys[module.layer_idx], batch.storage.values[module.layer_idx]
    kernel = _fused if batch.fused else _plain
    out = kernel(q, keys, values, batch, scaling)
    return out.unsqueeze(0), None  # [1, tokens, heads, head_dim], as transformers expects


def _fused(q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    window = batch.sliding_window - 1 if batch.sliding_window else -1
    return varlen_attn(
        q,
        keys,
        values,
        batch.cu_seq_q,
        batch.cu_seq_k,
        batch.max_q,
        batch.max_k,
        scale=scaling,
        window_size=(window, 0),  # causal, aligned to the end of each row's keys
        seqused_k=batch.lengths,
        block_table=batch.block_table,
        enable_gqa=q.shape[1] != keys.shape[2],
    )


def _plain(q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
    if batch.max_q == 1:
        return _plain_decode(q, keys, values, batch, scaling)
    return _plain_rows(q, keys, values, batch, scaling)


def _plain_decode(q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
    """Every row has one query: gather all rows' keys at once (padded to the longest), one sdpa."""
    slots, mask = batch.gathered()
    rows = len(batch.q_lengths)
    row_k = keys.flatten(0, 1)[slots.flatten()].view(rows, slots.shape[1], *keys.shape[2:]).transpose(1, 2)
    row_v = (
        values.flatten(0, 1)[slots.flatten()].view(rows, slots.shape[1], *values.shape[2:]).transpose(1, 2)
    )
    out = F.scaled_dot_product_attention(
        q[:, :, None], row_k, row_v, attn_mask=mask, scale=scaling, enable_gqa=True
    )  # [rows, heads, 1, head_dim]
    return out[:, :, 0]


def _plain_rows(q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
    """One row at a time: gather its keys through its block table, then sdpa with its causal mask."""
    flat_keys, flat_values = keys.flatten(0, 1), values.flatten(0, 1)
    block_tokens = keys.shape[1]
    outputs, start = [], 0
    for row, (q_len, k_len) in enumerate(zip(batch.q_lengths, batch.k_lengths)):
        blocks = -(-k_len // block_tokens)
        table = batch.block_table[row, :blocks].long()
        slots = (table[:, None] * block_tokens + torch.arange(block_tokens, device=q.device)).flatten()[
            :k_len
        ]
        row_q = q[start : start + q_len].transpose(0, 1)  # [heads, q_len, head_dim]
        row_k = flat_keys.index_select(0, slots).transpose(0, 1)
        row_v = flat_values.index_select(0, slots).transpose(0, 1)
        # Query i sits at position k_len - q_len + i and sees keys up to itself (and within the window).
        query_at = torch.arange(k_len - q_len, k_len, device=q.device)[:, None]
        key_at = torch.arange(k_len, device=q.device)[None, :]
        mask = key_at <= query_at
        if batch.sliding_window:
            mask &= key_at > query_at - batch.sliding_window
        out = F.scaled_dot_product_attention(
            row_q[None], row_k[None], row_v[None], attn_mask=mask, scale=scaling, enable_gqa=True
        )
        outputs.append(out[0].transpose(0, 1))
        start += q_len
    return torch.cat(outputs)


AttentionInterface.register(ATTENTION_NAME, paged_attention)
