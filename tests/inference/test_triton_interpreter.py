"""Our Triton paged-decode kernel on the CPU, under Triton's interpreter.

The interpreter is chosen when Triton is first imported, so the kernel's tests in test_paged_cache.py
run in a process of their own, started here with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_triton_kernel_under_the_interpreter():
    pytest.importorskip("triton", reason="Triton has no build for this platform (it ships for Linux x86-64)")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/inference/test_paged_cache.py",
            "-k",
            "triton",
        ],
        cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout


@pytest.mark.parametrize("capability", [80, 90])  # Ampere (A100, RTX 30xx), Hopper (H100, H200)
def test_the_triton_kernel_compiles_for_nvidia_gpus(capability):
    """Triton compiles for a GPU target without one (its own ptxas): the kernel the GPU will run builds."""
    triton = pytest.importorskip(
        "triton", reason="Triton has no build for this platform (it ships for Linux x86-64)"
    )
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from inference.triton_paged import STAGES, TILE, _paged_decode_kernel

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
