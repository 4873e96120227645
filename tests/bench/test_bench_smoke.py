"""The benchmarks still run (tiny model, smallest settings) and print one JSON line each.

Their figures are not judged here: speed is measured by running them, not by unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = {
    "engine.py": (["--tiny", "--repeats", "1", "--decode-tokens", "4"], {"prefill_ms", "decode_tok_s"}),
    "loop_lag.py": (
        ["--requests", "4", "--concurrency", "2", "--max-new-tokens", "2", "--skip-on-loop"],
        {"engine", "idle"},
    ),
    "throughput.py": (["--tiny", "--levels", "1,2", "--max-new-tokens", "2"], {"levels", "speedup_by_level"}),
    "burst.py": (["--tiny", "--running", "1", "--newcomers", "2"], {"by_way", "target"}),
    "precision.py": (["--tokens", "2", "--images", "1", "--ways", "8bit"], {"by_way"}),
    "cpu.py": (
        [
            "--checkpoint",
            "tests/fixtures/phi3v-tiny/checkpoint",
            "--crops",
            "4",
            "--tokens",
            "3",
            "--ways",
            "8bit",
        ],
        {"by_way", "memory_bandwidth_gb_s", "flags"},
    ),
    "load.py": (
        ["--people", "6", "--requests", "12", "--channels", "2"],
        {
            "requests",
            "answered",
            "refused",
            "failed",
            "stopped",
            "lost",
            "stale",
            "discord_calls_per_channel",
            "wall_s",
        },
    ),
    "step_profile.py": (
        ["--tiny", "--batch-sizes", "1,2", "--steps", "2"],
        {"runner", "plain_forward_batch1_step_ms"},
    ),
    "paged_kernel.py": (["--smoke"], {"by_rows", "copy_gb_s"}),
    "follow_up.py": (
        ["--checkpoint", "tests/fixtures/phi3v-tiny/checkpoint", "--crops", "4", "--tokens", "2"],
        {"by_way", "load_and_start_s"},
    ),
    "first_token.py": (
        ["--tiny", "--repeats", "1", "--ways", "graphs,plain-norms", "--profile"],
        {"prepare_ms", "vision_ms", "prefill_ms", "engine_ttft_ms", "work_tflop"},
    ),
}
# Run with these variables: the kernel's benchmark, without a GPU, under Triton's interpreter.
ENVIRONMENT = {"paged_kernel.py": {"TRITON_INTERPRET": "1"}}


@pytest.mark.slow
@pytest.mark.parametrize("script", RUNS)
def test_benchmark_prints_one_json_line(script):
    args, keys = RUNS[script]
    if script in ENVIRONMENT:
        pytest.importorskip(
            "triton", reason="Triton has no build for this platform (it ships for Linux x86-64)"
        )
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **ENVIRONMENT.get(script, {})},
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert keys <= result.keys()
