"""The preallocated KV cache in fixed-size blocks, and the attention that reads it (docs/kv-cache.md).

:class:`PagedStorage` holds every layer's keys and values, allocated once at start-up:
``[blocks, block_tokens, kv_heads, head_dim]`` per layer. A request owns the blocks a
:class:`~inference.serving.block_pool.BlockPool` gave it and nothing else, so a request joining or leaving
never moves another request's keys and values.

One forward pass of the runner is *packed*: every row's new tokens (one for a row that is decoding, a
chunk of its prompt for a row being prefilled) lie side by side in a batch of one sequence, and a
:class:`PagedBatch` says where each row's tokens start (``cu_seq_q``), how many keys each row has once
they are written (``lengths``), where each new key goes (``slots``) and which blocks each row holds
(``block_table``). :func:`paged_attention`, registered with transformers as :data:`ATTENTION_NAME`,
writes the new keys and values into their slots and lets every query see its own row's keys only,
up to itself, with one of three kernels (:data:`KERNELS`; the fastest of those that run here and agree
with ``plain`` at the model's own shapes is chosen at start-up, :mod:`inference.kernels.checks`):

- ``fused``: PyTorch's FlashAttention with a block table (``varlen_attn``, PyTorch 2.12 and newer, CUDA
  compute capability 8+, bf16/fp16): every row at once, keys read where they lie;
- ``triton``: our Triton kernel (:mod:`inference.kernels.triton_paged`, any PyTorch with Triton on CUDA) for
the
  rows that decode one token, keys read where they lie; rows with a prompt chunk as ``plain`` does;
- ``plain``: anywhere. Rows that decode one token: their keys gathered (padded to the longest) and one
  sdpa; rows with a prompt chunk: one at a time. Exact, and the reference the tests compare against,
  but it copies the keys it reads.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface

ATTENTION_NAME = "phi3v_paged"
GIB = 1024**3
KERNELS = ("fused", "triton", "plain")


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
    kernel: str = "plain"  # one of KERNELS
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


def kernel_runs_here(kernel: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``kernel`` exists for this device and dtype (the start-up self-check then tries it)."""
    if kernel == "plain":
        return True
    if device.type != "cuda":
        return False
    if kernel == "triton":
        try:
            import triton  # noqa: F401  (ships with PyTorch on Linux with CUDA)
        except ImportError:
            return False
        return True
    if dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # PyTorch 2.10 and newer
    except ImportError:
        return False
    if "block_table" not in inspect.signature(varlen_attn).parameters:  # block tables: PyTorch 2.12 and newer
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


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
    return attend(q, keys, values, batch, scaling).unsqueeze(0), None  # [1, tokens, heads, head_dim]


def attend(q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
    """``q`` ``[tokens, heads, head_dim]`` against the keys already written, with ``batch.kernel``."""
    kernel = _fused if batch.kernel == "fused" else _by_rows
    return kernel(q, keys, values, batch, scaling)


def _fused(q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    window = batch.sliding_window - 1 if batch.sliding_window else -1
    out = varlen_attn(
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
    assert isinstance(out, torch.Tensor)  # no auxiliary outputs asked for
    return out


def _by_rows(q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
    """The rows that decode one token together (Triton or a gather); rows with a prompt chunk one by one."""
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    decode = _triton_decode if batch.kernel == "triton" else _gather_decode
    if batch.max_q == 1:  # a pass that only decodes: every row, as they are
        return decode(q, keys, values, batch.block_table, batch.lengths, max(batch.k_lengths), batch, scale)
    out = torch.empty_like(q)
    if batch.single_queries is not None:
        rows, at, longest = batch.single_queries
        out[at] = decode(
            q[at], keys, values, batch.block_table[rows], batch.lengths[rows], longest, batch, scale
        )
    start = 0
    for row, count in enumerate(batch.q_lengths):
        if count > 1:
            out[start : start + count] = _row_attention(
                q[start : start + count], keys, values, batch, row, scale
            )
        start += count
    return out


def _triton_decode(q, keys, values, table, lengths, longest: int, batch: PagedBatch, scale: float):
    from inference.kernels.triton_paged import paged_decode

    return paged_decode(q.contiguous(), keys, values, table, lengths, scale, batch.sliding_window)


def _gather_decode(q, keys, values, table, lengths, longest: int, batch: PagedBatch, scale: float):
    """One query per row: every row's keys gathered at once, padded to the longest, and one sdpa."""
    block_tokens = keys.shape[1]
    blocks = -(-longest // block_tokens)
    offsets = torch.arange(block_tokens, device=q.device)
    slots = (table[:, :blocks].long()[:, :, None] * block_tokens + offsets).flatten(1)[:, :longest]
    at = torch.arange(longest, device=q.device)
    mask = at < lengths.long()[:, None]
    if batch.sliding_window:
        mask &= at >= lengths.long()[:, None] - batch.sliding_window
    rows = q.shape[0]
    row_k = keys.flatten(0, 1)[slots.flatten()].view(rows, longest, *keys.shape[2:]).transpose(1, 2)
    row_v = values.flatten(0, 1)[slots.flatten()].view(rows, longest, *values.shape[2:]).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        q[:, :, None], row_k, row_v, attn_mask=mask[:, None, None, :], scale=scale, enable_gqa=True
    )  # [rows, heads, 1, head_dim]
    return out[:, :, 0]


def _row_attention(row_q, keys, values, batch: PagedBatch, row: int, scale: float) -> torch.Tensor:
    """One row's queries ``[count, heads, head_dim]`` against its keys, gathered; causal at the end."""
    k_len = batch.k_lengths[row]
    block_tokens = keys.shape[1]
    table = batch.block_table[row, : -(-k_len // block_tokens)].long()
    slots = (table[:, None] * block_tokens + torch.arange(block_tokens, device=row_q.device)).flatten()[
        :k_len
    ]
    row_k = keys.flatten(0, 1).index_select(0, slots).transpose(0, 1)
    row_v = values.flatten(0, 1).index_select(0, slots).transpose(0, 1)
    window = batch.sliding_window if batch.sliding_window and batch.sliding_window < k_len else None
    out = attend_at_end(
        row_q.transpose(0, 1)[None], row_k[None], row_v[None], scale, window=window, bias=batch.causal_bias
    )
    return out[0].transpose(0, 1)


def attend_at_end(q, k, v, scale: float, *, window: int | None = None, bias: bool = True) -> torch.Tensor:
    """Queries ``[1, heads, q, d]`` that are the last ``q`` of ``k`` positions, against keys and values
    ``[1, kv_heads, k, d]``: each query sees the keys up to its own position (and within ``window``).

    A prompt's first chunk (q == k) is plain causal attention. A later chunk, with ``bias`` and as many
    key heads as query heads, passes PyTorch's ``causal_lower_right`` instead of a mask: no mask is built
    every layer, and on CUDA it reaches FlashAttention (which has no grouped heads there). Otherwise the
    mask is built, each query at position ``k - q + i``. On the CPU both give the same numbers bit for bit;
    elsewhere the runner uses the bias only after it agrees with the mask at start-up.
    """
    q_len, k_len = q.shape[2], k.shape[2]
    if window is None and q_len == k_len:
        causal: dict = {"is_causal": True}
    elif window is None and bias and q.shape[1] == k.shape[1]:
        causal = {"attn_mask": causal_lower_right(q_len, k_len)}
    else:
        query_at = torch.arange(k_len - q_len, k_len, device=q.device)[:, None]
        key_at = torch.arange(k_len, device=q.device)[None, :]
        mask = key_at <= query_at
        if window is not None:
            mask &= key_at > query_at - window
        causal = {"attn_mask": mask}
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True, **causal)


AttentionInterface.register(ATTENTION_NAME, paged_attention)
