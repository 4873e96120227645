"""The GPU suite's default steps fit in ten minutes, so one short run on a rented GPU measures them all."""

from __future__ import annotations

import re
from pathlib import Path

SUITE = Path(__file__).resolve().parents[2] / "bench" / "gpu_suite.sh"
SHORT_RUN_S = 590  # ten minutes, less the few seconds the wheels' install takes


def test_the_default_steps_fit_in_a_short_run():
    text = SUITE.read_text()
    [default] = re.findall(r"\[ \$\{#steps\[@\]\} -eq 0 \] && steps=\(([^)]*)\)", text)
    limits = {name: int(limit) for name, limit in re.findall(r"run_step (\w+) (\d+) ", text)}
    steps = default.split()
    assert set(steps) <= limits.keys(), f"default steps without a run_step line: {set(steps) - limits.keys()}"
    assert sum(limits[step] for step in steps) <= SHORT_RUN_S - 15
