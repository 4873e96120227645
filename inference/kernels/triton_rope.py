"""The rotary embedding and the paged KV write of one layer in one Triton kernel.

transformers' Phi-3 attention splits the ``qkv_proj`` output, rotates queries and keys with about ten
small kernels (products, a negation, concatenations, a sum) and the paged cache then copies keys and
values into their slots with two more: a dozen launches a layer, ~400 in a decoding step of the real
model, and in a prompt chunk copies of every query and key. Here one program per token reads its row
of ``qkv`` once, writes its rotated queries for attention and its rotated keys and its values straight
into their cache slots.

It computes what transformers computes, rounding where transformers rounds: ``q * cos`` and
``rotate_half(q) * sin`` each rounded to the model's dtype, then their sum, so the results are the same
bit for bit: tested on a GPU in bf16 and float32, and under Triton's interpreter in float32 (the
interpreter truncates float32 to bf16 where a GPU rounds to nearest, so there bf16 is compared within a
few steps); checked on the GPU at start-up by :func:`inference.kernels.fused_attention.check_fused_rope`
before use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotated(x1, x2, cos1, sin1, cos2, sin2, OUT: tl.constexpr):
    """Both halves of ``x * cos + rotate_half(x) * sin``, where ``rotate_half(x) = (-x2, x1)``; each product
    and the sum rounded to ``OUT`` as PyTorch's elementwise kernels round them."""
    first = (x1 * cos1).to(OUT).to(tl.float32) + (-x2 * sin1).to(OUT).to(tl.float32)
    second = (x2 * cos2).to(OUT).to(tl.float32) + (x1 * sin2).to(OUT).to(tl.float32)
    return first.to(OUT), second.to(OUT)


@triton.jit
def _rope_write_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    slots_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    qkv_token_stride,
    cos_token_stride,
    sin_token_stride,
    q_out_token_stride,
    cache_slot_stride,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HALF: tl.constexpr,  # half the head size: rotate_half swaps the halves
    HEADS_P2: tl.constexpr,  # the counts rounded up to powers of two (Triton's block shapes)
    KV_HEADS_P2: tl.constexpr,
    HALF_P2: tl.constexpr,
):
    token = tl.program_id(0)
    out_dtype = q_out_ptr.dtype.element_ty
    halves = tl.arange(0, HALF_P2)
    half_ok = halves < HALF
    cos_row = cos_ptr + token * cos_token_stride
    sin_row = sin_ptr + token * sin_token_stride
    cos1 = tl.load(cos_row + halves, mask=half_ok, other=0.0).to(tl.float32)[None, :]
    cos2 = tl.load(cos_row + HALF + halves, mask=half_ok, other=0.0).to(tl.float32)[None, :]
    sin1 = tl.load(sin_row + halves, mask=half_ok, other=0.0).to(tl.float32)[None, :]
    sin2 = tl.load(sin_row + HALF + halves, mask=half_ok, other=0.0).to(tl.float32)[None, :]
    row = qkv_ptr + token * qkv_token_stride
    head_size = 2 * HALF

    # Queries, [HEADS, HALF] per half, to the output that attention reads.
    heads = tl.arange(0, HEADS_P2)[:, None]
    q_ok = (heads < HEADS) & half_ok[None, :]
    q_at = row + heads * head_size + halves[None, :]
    q1 = tl.load(q_at, mask=q_ok, other=0.0).to(tl.float32)
    q2 = tl.load(q_at + HALF, mask=q_ok, other=0.0).to(tl.float32)
    q1, q2 = _rotated(q1, q2, cos1, sin1, cos2, sin2, out_dtype)
    q_to = q_out_ptr + token * q_out_token_stride + heads * head_size + halves[None, :]
    tl.store(q_to, q1, mask=q_ok)
    tl.store(q_to + HALF, q2, mask=q_ok)

    # Keys rotated and values as they are, into this token's cache slot.
    slot = tl.load(slots_ptr + token).to(tl.int64)
    kv_heads = tl.arange(0, KV_HEADS_P2)[:, None]
    kv_ok = (kv_heads < KV_HEADS) & half_ok[None, :]
    k_at = row + HEADS * head_size + kv_heads * head_size + halves[None, :]
    k1 = tl.load(k_at, mask=kv_ok, other=0.0).to(tl.float32)
    k2 = tl.load(k_at + HALF, mask=kv_ok, other=0.0).to(tl.float32)
    k1, k2 = _rotated(k1, k2, cos1, sin1, cos2, sin2, out_dtype)
    cache_at = slot * cache_slot_stride + kv_heads * head_size + halves[None, :]
    tl.store(k_cache_ptr + cache_at, k1, mask=kv_ok)
    tl.store(k_cache_ptr + cache_at + HALF, k2, mask=kv_ok)
    v_at = k_at + KV_HEADS * head_size
    tl.store(v_cache_ptr + cache_at, tl.load(v_at, mask=kv_ok, other=0.0), mask=kv_ok)
    tl.store(v_cache_ptr + cache_at + HALF, tl.load(v_at + HALF, mask=kv_ok, other=0.0), mask=kv_ok)


def rope_and_write(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slots: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """One layer's rotary embedding and KV write.

    ``qkv`` ``[tokens, (heads + 2 * kv_heads) * head_dim]``: the ``qkv_proj`` output, queries then keys then
    values; ``cos``/``sin`` ``[tokens, head_dim]``; ``slots`` ``[tokens]``: each token's flat cache slot;
    ``keys``/``values`` ``[blocks, block_tokens, kv_heads, head_dim]``: the layer's cache. Returns the rotated
    queries ``[tokens, heads, head_dim]``; the rotated keys and the values are written into their slots.
    """
    tokens = qkv.shape[0]
    kv_heads, head_dim = keys.shape[2], keys.shape[3]
    if head_dim % 2 or qkv.shape[1] != (heads + 2 * kv_heads) * head_dim:
        raise ValueError(f"qkv of width {qkv.shape[1]} is not {heads}+2x{kv_heads} heads of {head_dim}")
    if (
        qkv.stride(1) != 1
        or cos.stride(1) != 1
        or sin.stride(1) != 1
        or not (keys.is_contiguous() and values.is_contiguous())
    ):
        raise ValueError("qkv, cos, sin and the cache must be contiguous in their last dimension")
    queries = torch.empty(tokens, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if tokens == 0:
        return queries
    half = head_dim // 2
    _rope_write_kernel[(tokens,)](
        qkv,
        cos,
        sin,
        slots,
        queries,
        keys,
        values,
        qkv.stride(0),
        cos.stride(0),
        sin.stride(0),
        queries.stride(0),
        kv_heads * head_dim,
        HEADS=heads,
        KV_HEADS=kv_heads,
        HALF=half,
        HEADS_P2=triton.next_power_of_2(heads),
        KV_HEADS_P2=triton.next_power_of_2(kv_heads),
        HALF_P2=triton.next_power_of_2(half),
        enable_fp_fusion=False,  # a product and a sum rounded apart, as PyTorch's kernels round them
    )
    return queries
