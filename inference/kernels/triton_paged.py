"""Paged attention for decoding in Triton: one query per row, keys and values read where they lie.

PyTorch's own FlashAttention reads a block table only from PyTorch 2.12 on (``varlen_attn``). This
kernel needs only Triton, which ships with PyTorch on Linux with CUDA, so the paged cache copies
nothing on older PyTorch releases too. Programs walk a row's keys ``TILE`` tokens at a time through
its block table, with an online softmax in float32, the next tiles' reads already under way (Triton's
software pipelining, ``STAGES``). With few rows (one person asking), one program per
(row, head) would leave most of the GPU idle while each walks thousands of keys, so several programs
share a (row, head), each a stretch of its keys, and their partial results are merged by a second small
kernel ("flash-decoding"). The grid and arguments depend only on tensor shapes, never on lengths read back
to the host, so a CUDA graph can capture it.

The tests run it on the CPU with Triton's interpreter (``TRITON_INTERPRET=1``) against the plain kernel.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# The schedule, measured on an H200 at Phi-3-vision's shapes (bench/paged_kernel.py, bench/RESULTS.md): 128
# keys per iteration with two iterations' loads in flight read 32 rows of 2,400 keys at ~2.4 TB/s, against
# ~1.7 TB/s for 64 keys one iteration at a time; one program per multiprocessor beat two.
TILE = 128  # keys read per loop iteration of a program
WARPS = 4  # warps per program
STAGES = 2  # loop iterations whose loads are in flight at once (Triton's software pipelining)
PROGRAMS_PER_MULTIPROCESSOR = 1  # with fewer (row, head) pairs than this fills, rows' keys are split
MAX_SPLITS = 16  # programs sharing one (row, head) at most


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    part_acc_ptr,
    part_stats_ptr,
    table_ptr,
    lengths_ptr,
    q_row_stride,
    q_head_stride,
    k_block_stride,
    k_token_stride,
    k_head_stride,
    v_block_stride,
    v_token_stride,
    v_head_stride,
    out_row_stride,
    out_head_stride,
    table_row_stride,
    scale,
    window,
    GROUP: tl.constexpr,  # query heads per key/value head
    BLOCK_TOKENS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM: tl.constexpr,  # HEAD_DIM rounded up to a power of two
    TILE_TOKENS: tl.constexpr,
    WINDOWED: tl.constexpr,
    SPLITS: tl.constexpr,  # programs sharing one (row, head): each takes a stretch of its keys
    STAGES: tl.constexpr,
):
    row = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    kv_head = head // GROUP
    length = tl.load(lengths_ptr + row)
    dims = tl.arange(0, DIM)
    dim_ok = dims < HEAD_DIM
    q = tl.load(q_ptr + row * q_row_stride + head * q_head_stride + dims, mask=dim_ok, other=0.0)
    q = q.to(tl.float32) * scale
    start = length * 0  # an int32 like length, so that the loop below carries one type
    if WINDOWED:
        start = tl.maximum(length - window, 0)
    # This program's stretch of keys: whole tiles, the last stretch shorter (or empty).
    stretch = tl.cdiv(tl.cdiv(length - start, SPLITS), TILE_TOKENS) * TILE_TOKENS
    lo = start + split * stretch
    hi = tl.minimum(lo + stretch, length)
    best = tl.zeros([1], dtype=tl.float32) - float("inf")
    total = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([DIM], dtype=tl.float32)
    for first in tl.range(lo, hi, TILE_TOKENS, num_stages=STAGES):
        tokens = first + tl.arange(0, TILE_TOKENS)
        token_ok = tokens < hi
        block = tl.load(table_ptr + row * table_row_stride + tokens // BLOCK_TOKENS, mask=token_ok, other=0)
        block = block.to(tl.int64)
        offset = tokens % BLOCK_TOKENS
        both_ok = token_ok[:, None] & dim_ok[None, :]
        # Keys and values are both asked for before either is used, so both reads are in flight at once.
        k_at = block[:, None] * k_block_stride + offset[:, None] * k_token_stride + kv_head * k_head_stride
        keys = tl.load(k_ptr + k_at + dims[None, :], mask=both_ok, other=0.0)
        v_at = block[:, None] * v_block_stride + offset[:, None] * v_token_stride + kv_head * v_head_stride
        values = tl.load(v_ptr + v_at + dims[None, :], mask=both_ok, other=0.0)
        scores = tl.sum(keys.to(tl.float32) * q[None, :], axis=1)
        scores = tl.where(token_ok, scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=0))
        weights = tl.exp(scores - new_best)
        rescale = tl.exp(best - new_best)
        acc = acc * rescale + tl.sum(weights[:, None] * values.to(tl.float32), axis=0)
        total = total * rescale + tl.sum(weights, axis=0)
        best = new_best
    if SPLITS == 1:
        out = acc / total
        tl.store(out_ptr + row * out_row_stride + head * out_head_stride + dims, out, mask=dim_ok)
    else:  # partial results, merged by _merge_kernel (an empty stretch leaves best -inf and total 0)
        part = (row * tl.num_programs(1) + head) * SPLITS + split
        tl.store(part_acc_ptr + part * DIM + dims, acc)
        tl.store(part_stats_ptr + part * 2 + tl.arange(0, 1), best)
        tl.store(part_stats_ptr + part * 2 + 1 + tl.arange(0, 1), total)


@triton.jit
def _merge_kernel(
    part_acc_ptr,
    part_stats_ptr,
    out_ptr,
    out_row_stride,
    out_head_stride,
    HEAD_DIM: tl.constexpr,
    DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    SPLITS_P2: tl.constexpr,  # SPLITS rounded up to a power of two (Triton's block shapes)
):
    """One program per (row, head): its SPLITS partial softmax results merged into one, in float32."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    parts = tl.arange(0, SPLITS_P2)
    part_ok = parts < SPLITS
    first = (row * tl.num_programs(1) + head) * SPLITS
    best = tl.load(part_stats_ptr + (first + parts) * 2, mask=part_ok, other=float("-inf"))
    total = tl.load(part_stats_ptr + (first + parts) * 2 + 1, mask=part_ok, other=0.0)
    weight = tl.exp(best - tl.max(best, axis=0))  # an empty stretch (best -inf) weighs 0
    dims = tl.arange(0, DIM)
    acc = tl.load(
        part_acc_ptr + (first + parts)[:, None] * DIM + dims[None, :], mask=part_ok[:, None], other=0.0
    )
    merged = tl.sum(acc * weight[:, None], axis=0) / tl.sum(total * weight, axis=0)
    tl.store(out_ptr + row * out_row_stride + head * out_head_stride + dims, merged, mask=dims < HEAD_DIM)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    # Asked once per device, before any graph capture (the first call comes from an eager step).
    return torch.cuda.get_device_properties(device).multi_processor_count


def splits_for(rows: int, heads: int, device: torch.device) -> int:
    """How many programs share a (row, head): enough for PROGRAMS_PER_MULTIPROCESSOR (a power of two)."""
    if device.type != "cuda":
        return 1
    wanted = -(-PROGRAMS_PER_MULTIPROCESSOR * _multiprocessors(device) // (rows * heads))
    return 1 if wanted <= 1 else min(MAX_SPLITS, triton.next_power_of_2(wanted))


def paged_decode(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
    window: int | None = None,
    splits: int | None = None,
    *,
    tile: int = TILE,
    warps: int = WARPS,
    stages: int = STAGES,
) -> torch.Tensor:
    """``q`` ``[rows, heads, head_dim]``: each row's one query against its first ``lengths[row]`` keys.

    ``keys``/``values`` are the pool ``[blocks, block_tokens, kv_heads, head_dim]``; ``block_table``
    ``[rows, blocks per row]`` int32. ``splits`` programs share each (row, head) (default: enough to fill
    the GPU, :func:`splits_for`). Returns ``[rows, heads, head_dim]`` in ``q``'s dtype. ``tile``, ``warps``
    and ``stages`` are the kernel's schedule (bench/paged_kernel.py measures the choices).
    """
    rows, heads, head_dim = q.shape
    _, block_tokens, kv_heads, _ = keys.shape
    out = torch.empty_like(q)
    if rows == 0:
        return out
    splits = splits or splits_for(rows, heads, q.device)
    dim = triton.next_power_of_2(head_dim)
    part_acc = torch.empty(rows, heads, splits, dim, dtype=torch.float32, device=q.device)
    part_stats = torch.empty(rows, heads, splits, 2, dtype=torch.float32, device=q.device)
    _paged_decode_kernel[(rows, heads, splits)](
        q,
        keys,
        values,
        out,
        part_acc,
        part_stats,
        block_table,
        lengths,
        q.stride(0),
        q.stride(1),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        values.stride(0),
        values.stride(1),
        values.stride(2),
        out.stride(0),
        out.stride(1),
        block_table.stride(0),
        scale,
        window or 0,
        GROUP=heads // kv_heads,
        BLOCK_TOKENS=block_tokens,
        HEAD_DIM=head_dim,
        DIM=dim,
        TILE_TOKENS=tile,
        WINDOWED=bool(window),
        SPLITS=splits,
        STAGES=stages,
        num_warps=warps,
        num_stages=stages,
        enable_fp_fusion=True,  # Triton's default so far, said explicitly (newer releases ask)
    )
    if splits > 1:  # one small kernel more, where PyTorch operations took ten
        _merge_kernel[(rows, heads)](
            part_acc,
            part_stats,
            out,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            DIM=dim,
            SPLITS=splits,
            SPLITS_P2=triton.next_power_of_2(splits),
        )
    return out
