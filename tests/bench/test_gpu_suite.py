"""The GPU suite as the lent machine runs it: its default steps fit in one device call."""

from __future__ import annotations

import re
from pathlib import Path

SUITE = Path(__file__).resolve().parents[2] / "bench" / "gpu_suite.sh"
DEVICE_CALL_S = 590  # the device tool's call runs at most 600 s; the wheels' install takes a few


def test_the_default_steps_fit_in_one_device_call():
    text = SUITE.read_text()
    [default] = re.findall(r"\[ \$\{#steps\[@\]\} -eq 0 \] && steps=\(([^)]*)\)", text)
    limits = {name: int(limit) for name, limit in re.findall(r"run_step (\w+) (\d+) ", text)}
    steps = default.split()
    assert set(steps) <= limits.keys(), f"default steps without a run_step line: {set(steps) - limits.keys()}"
    assert sum(limits[step] for step in steps) <= DEVICE_CALL_S - 15
