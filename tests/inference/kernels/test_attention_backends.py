"""The paged attention on its own: keys written through block tables, read back row by row.

Compared with plain causal attention over each row's keys laid out contiguously, which is what a
row alone would compute. The fused kernel (FlashAttention with a block table) is CUDA-only and is
checked against the same reference on a GPU.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_upper_left

from inference.kernels import attention_backends
from inference.kernels.attention_backends import (
    BACKENDS,
    PLAIN,
    attend_at_end,
    check_causal_bias,
    gather_decode,
)
from inference.kernels.checks import SelfCheckFailed
from inference.kernels.paged_cache import PagedBatch, PagedStorage, paged_attention, slots_of
from inference.serving.block_pool import BlockPool

BLOCK = 16


class Layer(torch.nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.layer_idx = index


def make_storage(device="cpu", dtype=torch.float32, kv_heads=2, blocks=64, block=BLOCK) -> PagedStorage:
    return PagedStorage(
        num_layers=2,
        num_blocks=blocks,
        block_tokens=block,
        kv_heads=kv_heads,
        head_dim=8,
        dtype=dtype,
        device=device,
    )


def run_rows(
    storage,
    pool,
    rows,
    heads=4,
    kv_heads=2,
    window=None,
    kernel="plain",
    device="cpu",
    dtype=torch.float32,
    causal_bias=True,
):
    """Feed each row (request id, cached tokens, new tokens) through one packed pass of layer 1.

    Returns the packed output and, per row, the full keys/values it has (for the reference).
    """
    generator = torch.Generator().manual_seed(sum(r[1] + 7 * r[2] for r in rows))
    total = sum(new for _, _, new in rows)
    query = torch.randn(1, heads, total, 8, generator=generator).to(device, dtype)
    key = torch.randn(1, kv_heads, total, 8, generator=generator).to(device, dtype)
    value = torch.randn(1, kv_heads, total, 8, generator=generator).to(device, dtype)
    slots, width = [], max(len(pool.table(rid)) for rid, _, _ in rows)
    table = torch.zeros(len(rows), width, dtype=torch.int32)
    for index, (rid, cached, new) in enumerate(rows):
        slots += slots_of(pool.table(rid), cached, cached + new, storage.block_tokens)
        table[index, : len(pool.table(rid))] = torch.tensor(pool.table(rid))
    q_lengths = [new for _, _, new in rows]
    k_lengths = [cached + new for _, cached, new in rows]

    def on(values, dtype=torch.int32):
        return torch.tensor(values, dtype=dtype, device=device)

    batch = PagedBatch(
        storage=storage,
        slots=on(slots, torch.long),
        cu_seq_q=on([0, *itertools.accumulate(q_lengths)]),
        cu_seq_k=on([0, *itertools.accumulate(k_lengths)]),
        lengths=on(k_lengths),
        block_table=table.to(device),
        q_lengths=q_lengths,
        k_lengths=k_lengths,
        backend=BACKENDS[kernel],
        sliding_window=window,
        causal_bias=causal_bias,
    )
    out, _ = paged_attention(Layer(1), query, key, value, None, scaling=8**-0.5, paged_batch=batch)
    return query, key, value, out[0]


def reference(query, keys, values, window=None):
    """One row alone: [heads, q, d] against its contiguous [kv_heads, k, d], causal at the end."""
    q_len, k_len = query.shape[1], keys.shape[1]
    at = torch.arange(k_len - q_len, k_len)[:, None]
    key_at = torch.arange(k_len)[None, :]
    mask = key_at <= at
    if window:
        mask &= key_at > at - window
    return F.scaled_dot_product_attention(
        query[None].float(),
        keys[None].float(),
        values[None].float(),
        attn_mask=mask,
        scale=8**-0.5,
        enable_gqa=True,
    )[0]


PASSES = [  # request 1 prefills; 2 joins while 1 decodes; 3 joins in two chunks while 1 and 2 decode
    [(1, 0, 40)],
    [(1, 40, 1), (2, 0, 23)],
    [(1, 41, 1), (2, 23, 1), (3, 0, 17)],
    [(3, 17, 30), (2, 24, 1)],
    [(1, 42, 1), (2, 25, 1), (3, 47, 1)],  # every row decodes: the batched gather
    [(3, 48, 1), (1, 43, 1)],
]


def check_against_reference(
    device="cpu",
    dtype=torch.float32,
    kernel="plain",
    atol=1e-5,
    block=BLOCK,
    scale=1,
    kv_heads=2,
    causal_bias=True,
):
    """Run PASSES (prompt chunks ``scale`` times longer) and compare every row with the reference."""
    storage, pool = make_storage(device, dtype, kv_heads=kv_heads, block=block), BlockPool(64, block)
    history = {1: [], 2: [], 3: []}  # every key and value each request has written
    for rid in history:
        pool.reserve(rid, 60 * scale)
    for rows in PASSES:
        rows = [
            (rid, cached if new == 1 else cached * scale, new if new == 1 else new * scale)
            for rid, cached, new in rows
        ]
        rows = [(rid, sum(k.shape[1] for k, _ in history[rid]), new) for rid, _, new in rows]
        query, key, value, out = run_rows(
            storage, pool, rows, 4, kv_heads, None, kernel, device, dtype, causal_bias
        )
        start = 0
        for rid, cached, new in rows:
            history[rid].append((key[0, :, start : start + new], value[0, :, start : start + new]))
            keys = torch.cat([k for k, _ in history[rid]], dim=1)
            values = torch.cat([v for _, v in history[rid]], dim=1)
            assert keys.shape[1] == cached + new
            expected = reference(query[0, :, start : start + new].cpu(), keys.cpu(), values.cpu())
            got = out[start : start + new].transpose(0, 1).float().cpu()
            torch.testing.assert_close(got, expected, atol=atol, rtol=atol)
            start += new


def test_each_row_sees_exactly_its_own_keys_up_to_itself():
    check_against_reference()


@pytest.mark.parametrize("causal_bias", [True, False], ids=["without a mask", "through a mask"])
def test_a_prompts_later_chunk_sees_every_key_before_it(causal_bias):
    """As many key heads as query heads: later chunks attend through causal_lower_right or a mask."""
    check_against_reference(kv_heads=4, causal_bias=causal_bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_the_cpu_attention_without_a_mask_is_the_masks_bit_for_bit(dtype):
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, n, 16, generator=generator).to(dtype) for n in (37, 101, 101))
    assert torch.equal(attend_at_end(q, k, v, 0.25, bias=True), attend_at_end(q, k, v, 0.25, bias=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_start_up_check_of_attention_without_a_mask_passes_here(dtype):
    assert check_causal_bias(torch.device("cpu"), dtype, heads=4, head_dim=16) is None


def test_the_check_refuses_attention_aligned_to_the_start_of_the_keys(monkeypatch):
    monkeypatch.setattr(attention_backends, "causal_lower_right", causal_upper_left)
    problem = check_causal_bias(torch.device("cpu"), torch.bfloat16, heads=4, head_dim=16)
    assert problem is not None and "values differ from an explicit mask's" in problem
    assert problem.endswith("(300 queries on 2600 keys)")


def test_attention_without_a_mask_that_raises_is_refused_with_the_reason(monkeypatch):
    def raises(q_len, k_len):
        raise NotImplementedError("no kernel for this bias")

    monkeypatch.setattr(attention_backends, "causal_lower_right", raises)
    problem = check_causal_bias(torch.device("cpu"), torch.float32, heads=4, head_dim=16)
    assert problem == "NotImplementedError: no kernel for this bias"


def test_attention_without_a_mask_that_breaks_the_device_ends_the_start(monkeypatch):
    def breaks(q_len, k_len):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(attention_backends, "causal_lower_right", breaks)
    with pytest.raises(SelfCheckFailed, match="causal attention without a mask broke the GPU"):
        check_causal_bias(torch.device("cpu"), torch.float32, heads=4, head_dim=16)


def test_the_sliding_window_hides_keys_further_back():
    storage, pool = make_storage(), BlockPool(64, BLOCK)
    pool.reserve(1, 64)
    pool.reserve(2, 64)
    query, key, value, out = run_rows(storage, pool, [(1, 0, 50)], window=8)
    expected = reference(query[0], key[0], value[0], window=8)
    torch.testing.assert_close(out.transpose(0, 1), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.transpose(0, 1), reference(query[0], key[0], value[0]), atol=1e-3)
    # Decoding (one query per row, the batched gather) keeps the window too.
    _, key_2, value_2, _ = run_rows(storage, pool, [(2, 0, 20)], window=8)
    query, key_d, value_d, out = run_rows(storage, pool, [(1, 50, 1), (2, 20, 1)], window=8)
    for row, (keys, values) in enumerate(((key, value), (key_2, value_2))):
        keys = torch.cat([keys[0], key_d[0, :, row : row + 1]], dim=1)
        values = torch.cat([values[0], value_d[0, :, row : row + 1]], dim=1)
        expected = reference(query[0, :, row : row + 1], keys, values, window=8)
        torch.testing.assert_close(out[row : row + 1].transpose(0, 1), expected, atol=1e-5, rtol=1e-5)


def test_keys_land_in_the_rows_own_blocks_and_nowhere_else():
    storage, pool = make_storage(), BlockPool(64, BLOCK)
    pool.reserve(1, 40)
    pool.reserve(2, 40)
    before = storage.keys[1].clone()
    run_rows(storage, pool, [(2, 0, 33)])
    changed = (storage.keys[1] != before).flatten(1).any(1).nonzero().flatten().tolist()
    assert changed == pool.table(2)[:3]  # 33 tokens: its first three blocks, in its table's order
    assert set(changed).isdisjoint(pool.table(1))


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
triton_here = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="on a CPU these run under Triton's interpreter, in a process of their own that "
    "tests/inference/kernels/test_triton_interpreter.py starts (the interpreter is chosen before Triton "
    "loads)",
)


@pytest.fixture
def triton_device() -> torch.device:
    """Where the Triton kernel runs: the CPU under the interpreter, else the GPU (compiled)."""
    pytest.importorskip("triton", reason="Triton has no build for this platform (it ships for Linux x86-64)")
    return torch.device("cpu" if INTERPRETED else "cuda")


@triton_here
def test_the_triton_kernel_equals_the_reference(triton_device):
    check_against_reference(triton_device, kernel="triton")


@triton_here
def test_the_triton_kernel_keeps_the_sliding_window(triton_device):
    device = triton_device
    storage, pool = make_storage(device), BlockPool(64, BLOCK)
    for rid in (1, 2):
        pool.reserve(rid, 64)
    _, key_1, value_1, _ = run_rows(storage, pool, [(1, 0, 50)], device=device)
    _, key_2, value_2, _ = run_rows(storage, pool, [(2, 0, 20)], device=device)
    query, key_d, value_d, out = run_rows(
        storage, pool, [(1, 50, 1), (2, 20, 1)], window=8, kernel="triton", device=device
    )
    for row, (keys, values) in enumerate(((key_1, value_1), (key_2, value_2))):
        keys = torch.cat([keys[0], key_d[0, :, row : row + 1]], dim=1).cpu()
        values = torch.cat([values[0], value_d[0, :, row : row + 1]], dim=1).cpu()
        expected = reference(query[0, :, row : row + 1].cpu(), keys, values, window=8)
        got = out[row : row + 1].transpose(0, 1).cpu()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@triton_here
@pytest.mark.parametrize("splits", [1, 3, 4])
@pytest.mark.parametrize("window", [None, 40])
def test_the_triton_kernel_splits_a_rows_keys_between_programs(triton_device, splits, window):
    """Several programs per row and head, each a stretch of keys, merged: the same as one program alone.

    Rows of 300, 17 and 1 keys: with 3 or 4 splits some stretches are empty (one tile covers all)."""
    from inference.kernels.triton_paged import paged_decode

    generator = torch.Generator().manual_seed(splits)
    keys, values = (torch.randn(60, BLOCK, 2, 8, generator=generator) for _ in range(2))
    table = torch.randperm(60, generator=generator).reshape(3, 20).int()
    lengths = torch.tensor([300, 17, 1], dtype=torch.int32)
    query = torch.randn(3, 4, 8, generator=generator)
    batch = PagedBatch(
        storage=None,
        slots=None,
        cu_seq_q=None,
        cu_seq_k=None,
        lengths=lengths,
        block_table=table,
        q_lengths=[1, 1, 1],
        k_lengths=lengths.tolist(),
        backend=PLAIN,
        sliding_window=window,
    )
    expected = gather_decode(query, keys, values, table, lengths, 300, batch, 0.3)
    on = [t.to(triton_device) for t in (query, keys, values, table, lengths)]
    out = paged_decode(*on, 0.3, window, splits=splits)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares the kernels on a CUDA GPU (none here)")
@pytest.mark.parametrize("kv_heads", [2, 4], ids=["grouped heads", "as many key heads"])
@pytest.mark.parametrize("kernel", ["plain", "fused", "triton"])
def test_the_kernels_equal_the_reference_on_a_gpu(kernel, kv_heads):
    device = torch.device("cuda")
    if not BACKENDS[kernel].runs_here(device, torch.bfloat16):
        pytest.skip(f"the {kernel} kernel does not exist here (PyTorch or GPU too old, or no Triton)")
    # FlashAttention's block tables need blocks of a multiple of 256 tokens; prompts then span several.
    check_against_reference(device, torch.bfloat16, kernel, atol=2e-2, block=256, scale=12, kv_heads=kv_heads)
