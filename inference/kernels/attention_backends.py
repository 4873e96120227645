"""The paged attention backends, one small class each, and the start-up check that chooses among them.

Each backend reads a :class:`~inference.kernels.paged_cache.PagedBatch`'s keys its own way:

- ``fused``: PyTorch's FlashAttention with a block table (``varlen_attn``, PyTorch 2.12 and newer, CUDA
  compute capability 8+, bf16/fp16): every row at once, keys read where they lie;
- ``triton``: our Triton kernel (:mod:`inference.kernels.triton_paged`, any PyTorch with Triton on CUDA) for
  the rows that decode one token, keys read where they lie; rows with a prompt chunk as ``plain`` does;
- ``plain``: anywhere. Rows that decode one token: their keys gathered (padded to the longest) and one
  sdpa; rows with a prompt chunk: one at a time. Exact, and the reference the others are checked against,
  but it copies the keys it reads.

:func:`choose_backend` runs every backend that exists here on planted keys and values at the model's own
shapes (its heads, head size and sliding window; one row and the largest batch bucket; rows of 1, ~300,
~2,600 and over 4,096 keys; a prompt chunk beside answering rows; block tables shuffled), compares each
output element with the plain backend computed in float32, and keeps the fastest that agrees, by its
measured time on the largest case. :func:`check_causal_bias` proves the plain path's one shortcut.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from inference.kernels.checks import (
    TOLERANCE,
    SelfCheckFailed,
    disagreement,
    reason_unless_fatal,
    time_ms,
)
from inference.kernels.paged_cache import AttentionBackend, PagedBatch, PagedStorage, slots_of

log = logging.getLogger(__name__)

CHECK_LENGTHS = (1, 300, 2600, 4400)  # keys per answering row, cycled; the last is past LongRoPE's 4,096
CHUNK = (300, 2600)  # a prompt chunk of 300 queries whose row then has 2,600 keys
# A prompt's later chunk: (queries, keys). A 16-crop prompt's second chunk is ~330 queries on ~2,400 keys.
LATER_CHUNKS = ((300, 2600), (37, 101))


def triton_runs_here(device: torch.device) -> bool:
    """Whether Triton kernels can run on ``device`` (a CUDA GPU, with Triton installed)."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401  (ships with PyTorch on Linux with CUDA)
    except ImportError:
        return False
    return True


class PlainBackend(AttentionBackend):
    name = "plain"
    text = "gathered row by row"
    graph_safe = False  # its gather is sized by lengths read on the host

    def runs_here(self, device: torch.device, dtype: torch.dtype) -> bool:
        return True

    def attend(self, q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
        """The rows that decode one token together (:meth:`decode`); rows with a prompt chunk one by one."""
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        if batch.max_q == 1:  # a pass that only decodes: every row, as they are
            return self.decode(
                q, keys, values, batch.block_table, batch.lengths, max(batch.k_lengths), batch, scale
            )
        out = torch.empty_like(q)
        if batch.single_queries is not None:
            rows, at, longest = batch.single_queries
            out[at] = self.decode(
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

    def decode(self, q, keys, values, table, lengths, longest: int, batch: PagedBatch, scale: float):
        """One query per row ``[rows, heads, head_dim]`` against its keys."""
        return gather_decode(q, keys, values, table, lengths, longest, batch, scale)


class TritonBackend(PlainBackend):
    name = "triton"
    text = "a Triton kernel reading the blocks in place (prompt chunks: gathered row by row)"
    graph_safe = True

    def runs_here(self, device: torch.device, dtype: torch.dtype) -> bool:
        return triton_runs_here(device)

    def decode(self, q, keys, values, table, lengths, longest: int, batch: PagedBatch, scale: float):
        from inference.kernels.triton_paged import paged_decode

        return paged_decode(q.contiguous(), keys, values, table, lengths, scale, batch.sliding_window)


class FusedBackend(AttentionBackend):
    name = "fused"
    text = "PyTorch's FlashAttention, reading the blocks in place"
    graph_safe = True

    def runs_here(self, device: torch.device, dtype: torch.dtype) -> bool:
        if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
            return False
        try:
            from torch.nn.attention.varlen import varlen_attn  # PyTorch 2.10 and newer
        except ImportError:
            return False
        if "block_table" not in inspect.signature(varlen_attn).parameters:  # PyTorch 2.12 and newer
            return False
        return torch.cuda.get_device_capability(device)[0] >= 8

    def attend(self, q, keys, values, batch: PagedBatch, scaling: float | None) -> torch.Tensor:
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


# Every backend, by name, the fastest kind first; the plain one is the reference.
BACKENDS: dict[str, AttentionBackend] = {
    backend.name: backend for backend in (FusedBackend(), TritonBackend(), PlainBackend())
}
PLAIN = BACKENDS["plain"]


def gather_decode(q, keys, values, table, lengths, longest: int, batch: PagedBatch, scale: float):
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
    elsewhere the runner uses the bias only after :func:`check_causal_bias` found it equal to the mask.
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


# -- Start-up checks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendChoice:
    """The attention backend chosen, and what the check measured (milliseconds per call)."""

    backend: AttentionBackend
    timings_ms: dict[str, float] = field(default_factory=dict)  # backends that agreed with plain
    refused: dict[str, str] = field(default_factory=dict)  # backend -> why it is not used

    @property
    def time_ms(self) -> float | None:
        return self.timings_ms.get(self.backend.name)

    def summary(self) -> str:
        """e.g. ``triton 0.31 ms, plain 2.10 ms; fused refused (it differs …)``."""
        timed = ", ".join(f"{name} {ms:.2f} ms" for name, ms in self.timings_ms.items())
        refused = "; ".join(f"{name} refused ({why})" for name, why in self.refused.items())
        return "; ".join(part for part in (timed, refused) if part)


@dataclass(frozen=True)
class _Case:
    """One attention call to check: queries per row, keys per row, and each row's block table."""

    q_lengths: list[int]
    k_lengths: list[int]
    tables: list[list[int]]


class _Planted:
    """A small storage of random keys and values, and the cases that read it."""

    def __init__(self, device, dtype, heads: int, kv_heads: int, head_dim: int, max_rows: int, window):
        self.device, self.window = device, window
        self.block_tokens = 256
        num_blocks = -(-max(CHECK_LENGTHS) // self.block_tokens) + 1
        generator = torch.Generator(device="cpu").manual_seed(0)
        shape = (num_blocks, self.block_tokens, kv_heads, head_dim)
        self.storage = PagedStorage(
            num_layers=1,
            num_blocks=num_blocks,
            block_tokens=self.block_tokens,
            kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
        )
        self.storage.keys[0].copy_(torch.randn(shape, generator=generator))
        self.storage.values[0].copy_(torch.randn(shape, generator=generator))
        self.reference_keys = self.storage.keys[0].float()
        self.reference_values = self.storage.values[0].float()

        def shuffled() -> list[int]:  # every row reads the blocks in its own random order
            return torch.randperm(num_blocks, generator=generator).tolist()

        decode_rows = [CHECK_LENGTHS[i % len(CHECK_LENGTHS)] for i in range(max_rows)]
        self.cases = {
            "one row": _Case([1], [max(CHECK_LENGTHS)], [shuffled()]),
            f"{max_rows} rows": _Case([1] * max_rows, decode_rows, [shuffled() for _ in decode_rows]),
            "a prompt chunk beside answering rows": _Case(
                [1, CHUNK[0], 1], [CHECK_LENGTHS[-1], CHUNK[1], 1], [shuffled() for _ in range(3)]
            ),
        }
        self.largest = f"{max_rows} rows"
        self.queries = {
            name: torch.randn(sum(case.q_lengths), heads, head_dim, generator=generator).to(device, dtype)
            for name, case in self.cases.items()
        }

    def batch(self, case: _Case, backend: AttentionBackend) -> PagedBatch:
        def on(values, kind=torch.int32):
            return torch.tensor(values, dtype=kind, device=self.device)

        slots = [
            s
            for table, q, k in zip(case.tables, case.q_lengths, case.k_lengths)
            for s in slots_of(table, k - q, k, self.block_tokens)
        ]
        return PagedBatch(
            storage=self.storage,
            slots=on(slots, torch.long),
            cu_seq_q=on([0, *itertools.accumulate(case.q_lengths)]),
            cu_seq_k=on([0, *itertools.accumulate(case.k_lengths)]),
            lengths=on(case.k_lengths),
            block_table=on(case.tables),
            q_lengths=case.q_lengths,
            k_lengths=case.k_lengths,
            backend=backend,
            sliding_window=self.window,
        )

    def run(self, name: str, backend: AttentionBackend) -> torch.Tensor:
        batch = self.batch(self.cases[name], backend)
        return backend.attend(self.queries[name], self.storage.keys[0], self.storage.values[0], batch, None)

    def reference(self, name: str) -> torch.Tensor:
        batch = self.batch(self.cases[name], PLAIN)
        query = self.queries[name].float()
        return PLAIN.attend(query, self.reference_keys, self.reference_values, batch, None)


@torch.inference_mode()
def choose_backend(
    device: torch.device,
    dtype: torch.dtype,
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
    sliding_window: int | None,
    max_rows: int,
) -> BackendChoice:
    """The fastest of :data:`BACKENDS` that exists here and agrees with the plain one.

    Where only ``plain`` exists (the CPU, Apple's ``mps``) nothing is compared: it is the reference.
    """
    candidates = [backend for backend in BACKENDS.values() if backend.runs_here(device, dtype)]
    if candidates == [PLAIN]:
        return BackendChoice(PLAIN)
    planted = _Planted(device, dtype, heads, kv_heads, head_dim, max_rows, sliding_window)
    references = {name: planted.reference(name) for name in planted.cases}
    tolerance = TOLERANCE.get(dtype, 1e-2)
    timings, refused = {}, {}
    for backend in candidates:
        try:
            problem = None
            for name in planted.cases:
                why = disagreement(planted.run(name, backend), references[name], tolerance)
                if why is not None:
                    problem = f"{why} ({name})"
                    break
            if problem is None:
                timings[backend.name] = time_ms(
                    functools.partial(planted.run, planted.largest, backend), device
                )
        except Exception as error:
            problem = reason_unless_fatal(error, f"The {backend.name} attention kernel")
        if problem is not None:
            refused[backend.name] = problem
            log.warning(
                "The %s paged attention kernel failed its start-up check: not used (%s).",
                backend.name,
                problem,
            )
    if not timings:
        raise SelfCheckFailed(
            "No attention kernel, not even the plain one, computed attention correctly on this device "
            f"({'; '.join(f'{k}: {why}' for k, why in refused.items())})."
        )
    chosen = min(timings, key=timings.__getitem__)
    return BackendChoice(BACKENDS[chosen], timings, refused)


@torch.inference_mode()
def check_causal_bias(device: torch.device, dtype: torch.dtype, *, heads: int, head_dim: int) -> str | None:
    """:func:`attend_at_end` with PyTorch's ``causal_lower_right`` against the same attention through an
    explicit mask, computed in float32, for :data:`LATER_CHUNKS`; None when every element agrees within the
    dtype's tolerance, else what differed (then the runner builds the mask)."""
    generator = torch.Generator().manual_seed(0)
    tolerance = TOLERANCE.get(dtype, 1e-2)
    scale = head_dim**-0.5
    try:
        for queries, keys in LATER_CHUNKS:
            q, k, v = (
                torch.randn(1, heads, length, head_dim, generator=generator).to(device)
                for length in (queries, keys, keys)
            )
            got = attend_at_end(q.to(dtype), k.to(dtype), v.to(dtype), scale, bias=True)
            expected = attend_at_end(q, k, v, scale, bias=False)
            why = disagreement(got, expected, tolerance, "an explicit mask's")
            if why is not None:
                return f"{why} ({queries} queries on {keys} keys)"
    except Exception as error:
        return reason_unless_fatal(error, "PyTorch's causal attention without a mask")
    return None
