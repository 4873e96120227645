"""Our Triton kernels on the CPU, under Triton's interpreter.

The interpreter is chosen when Triton is first imported, so the kernels' tests in
test_attention_backends.py and test_fused_rope.py run in a process of their own, started here with
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def interpreted(*pytest_args: str) -> str:
    """Run pytest on ``pytest_args`` in a process of its own with ``TRITON_INTERPRET=1``; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
        cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done.stdout


def test_the_triton_kernel_under_the_interpreter():
    pytest.importorskip("triton", reason="Triton has no build for this platform (it ships for Linux x86-64)")
    assert "8 passed" in interpreted("tests/inference/kernels/test_attention_backends.py", "-k", "triton")


def test_the_rotary_kernel_under_the_interpreter():
    pytest.importorskip("triton", reason="Triton has no build for this platform (it ships for Linux x86-64)")
    assert "12 passed" in interpreted("tests/inference/kernels/test_fused_rope.py")


@pytest.mark.parametrize("capability", [80, 90])  # Ampere (A100, RTX 30xx), Hopper (H100, H200)
def test_the_triton_kernel_compiles_for_nvidia_gpus(capability):
    """Triton compiles for a GPU target without one (its own ptxas): the kernel the GPU will run builds."""
    triton = pytest.importorskip(
        "triton", reason="Triton has no build for this platform (it ships for Linux x86-64)"
    )
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from inference.kernels.triton_paged import STAGES, TILE, _merge_kernel, _paged_decode_kernel

    pointers = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "out_ptr": "*bf16"}
    pointers |= {"table_ptr": "*i32", "lengths_ptr": "*i32"}
    strides = [name for name in _paged_decode_kernel.arg_names if name.endswith("_stride")]
    constants = {
        "GROUP": 1,
        "BLOCK_TOKENS": 256,
        "HEAD_DIM": 96,
        "DIM": 128,
        "TILE_TOKENS": TILE,
        "STAGES": STAGES,
    }
    pointers |= {"part_acc_ptr": "*fp32", "part_stats_ptr": "*fp32"}
    for windowed, splits in ((False, 1), (True, 1), (False, 8)):
        signature = {**pointers, **dict.fromkeys(strides, "i32"), "scale": "fp32", "window": "i32"}
        signature |= dict.fromkeys([*constants, "WINDOWED", "SPLITS"], "constexpr")
        source = ASTSource(
            _paged_decode_kernel, signature, {**constants, "WINDOWED": windowed, "SPLITS": splits}
        )
        compiled = triton.compile(
            source, target=GPUTarget("cuda", capability, 32), options={"enable_fp_fusion": True}
        )
        assert compiled.asm["cubin"]  # machine code, not only PTX: ptxas accepted it
    # The kernel that merges the split programs' partial results.
    signature = {"part_acc_ptr": "*fp32", "part_stats_ptr": "*fp32", "out_ptr": "*bf16"}
    signature |= {"out_row_stride": "i32", "out_head_stride": "i32"}
    merge_constants = {"HEAD_DIM": 96, "DIM": 128, "SPLITS": 8, "SPLITS_P2": 8}
    source = ASTSource(
        _merge_kernel, signature | dict.fromkeys(merge_constants, "constexpr"), merge_constants
    )
    assert triton.compile(source, target=GPUTarget("cuda", capability, 32)).asm["cubin"]


@pytest.mark.parametrize("capability", [80, 90])
def test_the_rotary_kernel_compiles_for_nvidia_gpus(capability):
    triton = pytest.importorskip(
        "triton", reason="Triton has no build for this platform (it ships for Linux x86-64)"
    )
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from inference.kernels.triton_rope import _rope_write_kernel

    pointers = dict.fromkeys(
        ["qkv_ptr", "cos_ptr", "sin_ptr", "q_out_ptr", "k_cache_ptr", "v_cache_ptr"], "*bf16"
    )
    strides = [name for name in _rope_write_kernel.arg_names if name.endswith("_stride")]
    constants = {"HEADS": 32, "KV_HEADS": 32, "HALF": 48, "HEADS_P2": 32, "KV_HEADS_P2": 32, "HALF_P2": 64}
    signature = {**pointers, "slots_ptr": "*i64", **dict.fromkeys(strides, "i32")}
    signature |= dict.fromkeys(constants, "constexpr")
    source = ASTSource(_rope_write_kernel, signature, constants)
    # As it is launched: without fusing a product and a sum into one rounding (float32 models).
    compiled = triton.compile(
        source, target=GPUTarget("cuda", capability, 32), options={"enable_fp_fusion": False}
    )
    assert compiled.asm["cubin"]
    assert "fma.rn.f32" not in compiled.asm["ptx"]
    # The roundings that make it equal to transformers' stay in the machine code: round-to-nearest casts.
    assert "cvt.rn.bf16.f32" in compiled.asm["ptx"] or "cvt.rn.bf16x2.f32" in compiled.asm["ptx"]
