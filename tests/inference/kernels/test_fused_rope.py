"""The rotary embedding and KV write in one Triton kernel: transformers' result bit for bit, in the right
slots and no others; the attention layer that uses it answers as transformers' does; the runner uses it
only after its start-up check.

The kernel's tests run on a CUDA GPU, or on the CPU under Triton's interpreter (test_triton_interpreter.py
starts them with ``TRITON_INTERPRET=1``); the runner's wiring is tested everywhere with a stand-in kernel
written with PyTorch operations.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
from transformers.models.phi3.modeling_phi3 import Phi3Attention, apply_rotary_pos_emb

from inference.kernels import fused_attention
from inference.kernels.fused_attention import FusedRopeAttention, check_fused_rope, use_fused_rope
from inference.serving import startup as startup_module

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="runs on a CUDA GPU, or on the CPU under Triton's interpreter (test_triton_interpreter.py)",
)


def rope_in_torch(qkv, cos, sin, slots, keys, values, heads):
    """What the kernel computes, in transformers' own operations: the stand-in where Triton is absent."""
    kv_heads, head_dim = keys.shape[2], keys.shape[3]
    tokens = qkv.shape[0]
    widths = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    q, k, v = (part.view(1, tokens, -1, head_dim).transpose(1, 2) for part in qkv.split(widths, -1))
    q, k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    keys.view(-1, kv_heads, head_dim).index_copy_(0, slots, k[0].transpose(0, 1))
    values.view(-1, kv_heads, head_dim).index_copy_(0, slots, v[0].transpose(0, 1))
    return q[0].transpose(0, 1).contiguous()


def case(tokens, heads, kv_heads, head_dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = (heads + 2 * kv_heads) * head_dim
    qkv = (torch.randn(tokens, width, generator=generator) * 3).to(DEVICE, dtype)
    positions = torch.randint(0, 9000, (tokens, 1), generator=generator).float()
    frequencies = 1 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.cat([positions * frequencies] * 2, dim=-1)
    block_tokens, num_blocks = 8, tokens // 8 + 3
    slots = torch.randperm(num_blocks * block_tokens, generator=generator)[:tokens].to(DEVICE)
    cache = (num_blocks, block_tokens, kv_heads, head_dim)
    return qkv, angles.cos().to(DEVICE, dtype), angles.sin().to(DEVICE, dtype), slots, cache


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "tokens, heads, kv_heads, head_dim", [(1, 32, 32, 96), (19, 4, 4, 16), (5, 8, 2, 64)]
)
def test_the_kernel_is_transformers_rotary_and_write_bit_for_bit(dtype, tokens, heads, kv_heads, head_dim):
    from inference.kernels.triton_rope import rope_and_write

    qkv, cos, sin, slots, shape = case(tokens, heads, kv_heads, head_dim, dtype)
    got = [torch.zeros(shape, dtype=dtype, device=DEVICE) for _ in range(2)]
    want = [torch.zeros(shape, dtype=dtype, device=DEVICE) for _ in range(2)]
    queries = rope_and_write(qkv, cos, sin, slots, *got, heads)
    expected = rope_in_torch(qkv, cos, sin, slots, *want, heads)
    assert torch.equal(got[1], want[1])  # the values, copied: every slot written or still zero
    if dtype == torch.bfloat16 and INTERPRETED:
        # Triton's interpreter truncates float32 to bfloat16 where a GPU rounds to nearest as PyTorch does: on
        # the CPU each of the three roundings may be one step off, so the results agree within a few steps of
        # the largest input (a wrong half, sign, head or slot is off by the inputs' own size).
        steps = 4 * 2**-8 * float(qkv.abs().max())
        for got_part, want_part in ((queries, expected), (got[0], want[0])):
            torch.testing.assert_close(got_part, want_part, atol=steps, rtol=0)
        return
    assert torch.equal(queries, expected)
    assert torch.equal(got[0], want[0])


def test_the_layer_without_a_paged_batch_is_transformers_attention():
    """``generate`` and the CPU's speed measurement call the model without the runner's batch."""
    from tests.inference.phi3v.test_modeling_phi3v import random_model, tiny_config

    model = random_model(tiny_config())
    ids = torch.randint(0, 32064, (1, 12), generator=torch.Generator().manual_seed(3))
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        assert use_fused_rope(model, True) == model.config.num_hidden_layers
        # New layers holding the very same projections, under the same names (no class swapped).
        assert all(parameters[name] is parameter for name, parameter in model.named_parameters())
        assert len(dict(model.named_parameters())) == len(parameters)
        assert all(type(layer.self_attn) is FusedRopeAttention for layer in model.model.layers)
        assert torch.equal(model(input_ids=ids).logits, plain)
    assert use_fused_rope(model, False) == model.config.num_hidden_layers
    assert all(type(layer.self_attn) is Phi3Attention for layer in model.model.layers)


def test_the_check_passes_for_the_stand_in(monkeypatch):
    monkeypatch.setattr(fused_attention, "rope_and_write", rope_in_torch)
    assert check_fused_rope(torch.device("cpu"), torch.float32, heads=4, kv_heads=2, head_dim=16) is None


def wrong_slots(qkv, cos, sin, slots, keys, values, heads):
    """Right values in the wrong slots: every token one slot further on."""
    return rope_in_torch(qkv, cos, sin, (slots + 1) % slots.numel(), keys, values, heads)


def sine_backwards(qkv, cos, sin, slots, keys, values, heads):
    return rope_in_torch(qkv, cos, -sin, slots, keys, values, heads)


@pytest.mark.parametrize("kernel, what", [(wrong_slots, "keys: "), (sine_backwards, "queries: ")])
def test_the_check_refuses_a_kernel_that_computes_something_else(monkeypatch, kernel, what):
    monkeypatch.setattr(fused_attention, "rope_and_write", kernel)
    problem = check_fused_rope(torch.device("cpu"), torch.float32, heads=4, kv_heads=2, head_dim=16)
    assert problem is not None and problem.startswith(what) and "values differ from transformers'" in problem


def test_a_kernel_that_breaks_the_device_ends_the_start(monkeypatch):
    from inference.kernels.checks import SelfCheckFailed

    def breaks(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(fused_attention, "rope_and_write", breaks)
    with pytest.raises(SelfCheckFailed, match="The fused rotary embedding broke the GPU"):
        check_fused_rope(torch.device("cpu"), torch.float32, heads=4, kv_heads=2, head_dim=16)


@pytest.mark.skipif(
    not INTERPRETED, reason="under Triton's interpreter (test_triton_interpreter.py); on a GPU: test_gpu.py"
)
def test_the_runner_with_the_kernel_answers_like_generate(monkeypatch, caplog):
    """The real kernel, interpreted, in the runner's packed passes: prompt chunks and decoding."""
    from inference.types import Request, Task
    from tests.inference.serving.test_runner import Generated, alone, image, paged, same_answers

    monkeypatch.setattr(startup_module, "triton_runs_here", lambda device: True)
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = paged(prefill_chunk_tokens=300)
    assert runner.fused_rope
    assert any(r.getMessage().startswith("Rotary embedding and KV write: fused") for r in caplog.records)
    request = Request(Task.DESCRIBE, (image(90, 60, 1),), question="What is this?")
    same_answers(alone(runner, request), 1, Generated().answer(request), 1)
