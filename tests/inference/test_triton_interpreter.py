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
    assert "2 passed" in done.stdout
