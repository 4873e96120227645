"""Which way the CPU multiplies by 8-bit weights, chosen by measurement on this machine at start-up.

An 8-bit layer (:class:`inference.kernels.cpu_int8.Int8Linear`) multiplies in one of three ways: PyTorch's
int8 kernel, its dense copy in the model's precision (where memory allowed one), or its weight expanded for
the product. Which is fastest depends on the rows in the product (one a person when answering, hundreds when
reading a prompt) and on the CPU: matrix units (AMX), AVX-512 BF16 or only AVX2 change the crossover several
fold. So the start times every candidate at the model's shape over a few row counts, checks each one's numbers
against the plain float32 product, and sets the rows at which the layers change way (:class:`ProductRules`).
A candidate that is wrong is refused whatever its speed. torchao is not a candidate: its CPU int8 paths were
measured far slower than PyTorch's kernel (see ``cpu_int8``), so it is named in the log as left out.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

# Row counts timed: one person answering, a batch, and prompt chunks.
ROWS = (1, 2, 4, 8, 16, 64, 256)
REPEATS = 2  # timings per candidate and row count (after one to warm up); the median counts
# Largest difference from the float32 product, relative to its largest value, that a candidate may show: bf16
# activations round to 3 significant digits.
TOLERANCE = 2e-2
INT8_KERNEL, DENSE_COPY, EXPANDED = "int8 kernel", "dense copy", "expanded weight"
EVERY = 1 << 30  # rows: "any number of"


@dataclass
class ProductRules:
    """The rows at which an 8-bit layer changes way; one object shared by every 8-bit layer of a model, set by
    the start (its only writer) before anyone is served."""

    kernel_max_rows: int = 192  # without a dense copy: the int8 kernel up to here, the expanded weight above
    dense_after_rows: int = 8  # with a dense copy: the int8 kernel up to here, the dense copy above
    measured: bool = False  # False: the defaults above (measured on two machines), not this one's


@dataclass
class Measurement:
    """Seconds per product by candidate and rows, and the candidates refused for wrong numbers (and why)."""

    seconds: dict[str, dict[int, float]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def faster(self, first: str, second: str) -> list[int]:
        """The tested rows at which ``first`` took no longer than ``second`` (both correct)."""
        a, b = self.seconds.get(first, {}), self.seconds.get(second, {})
        return [rows for rows in sorted(a) if rows in b and a[rows] <= b[rows]]


def measure(
    candidates: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    reference: Callable[[torch.Tensor], torch.Tensor],
    in_features: int,
    dtype: torch.dtype,
    rows: Sequence[int] = ROWS,
    repeats: int = REPEATS,
    clock: Callable[[], float] = time.perf_counter,
) -> Measurement:
    """Time each candidate on inputs of each row count, after checking its numbers against ``reference``
    (float32) at the largest row count; a wrong or failing candidate is refused and not timed."""
    result = Measurement()
    generator = torch.Generator().manual_seed(0)
    inputs = {n: torch.randn(n, in_features, generator=generator).to(dtype) for n in rows}
    expected = reference(inputs[max(rows)].float())
    scale = float(expected.abs().max()) or 1.0
    for name, multiply in candidates.items():
        try:
            got = multiply(inputs[max(rows)]).float()
        except (RuntimeError, NotImplementedError) as failure:
            result.refused[name] = f"failed: {failure}".splitlines()[0][:120]
            continue
        off = float((got - expected).abs().max()) / scale if got.shape == expected.shape else float("inf")
        if not off <= TOLERANCE:
            result.refused[name] = f"wrong numbers (off by {off:.1%} of the largest value)"
            continue
        result.seconds[name] = {n: _median_seconds(multiply, inputs[n], repeats, clock) for n in rows}
    return result


def _median_seconds(
    multiply: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    repeats: int,
    clock: Callable[[], float],
) -> float:
    multiply(x)  # the first call allocates
    times = []
    for _ in range(repeats):
        started = clock()
        multiply(x)
        times.append(clock() - started)
    return statistics.median(times)


def rules_from(measurement: Measurement) -> ProductRules:
    """The rows where each way stops paying, from what was measured (the tested row count before the first
    one where the other way was faster); a refused way is never chosen."""
    times = measurement.seconds
    if INT8_KERNEL not in times:
        return ProductRules(kernel_max_rows=0, dense_after_rows=0, measured=True)
    tested = sorted(times[INT8_KERNEL])

    def kernel_rows_against(other: str) -> int:
        """Where ``other`` is refused (wrong, or no dense copy), the kernel for every row count."""
        if other not in times:
            return EVERY
        return _last_before_losing(tested, measurement.faster(INT8_KERNEL, other))

    return ProductRules(kernel_rows_against(EXPANDED), kernel_rows_against(DENSE_COPY), measured=True)


def _last_before_losing(tested: list[int], winning: list[int]) -> int:
    """The largest tested row count up to which the first way won every time (0: it lost at once); where it
    never lost, it is kept for every row count."""
    last = 0
    for rows in tested:
        if rows not in winning:
            return last
        last = rows
    return EVERY


def describe(measurement: Measurement, rules: ProductRules) -> list[str]:
    """What the log and ``--check`` say: the choice, then each candidate's times (or why it was refused)."""
    lines = [
        f"layers with a dense copy: the int8 kernel up to {_rows(rules.dense_after_rows)} rows, the dense "
        f"copy above; without: the int8 kernel up to {_rows(rules.kernel_max_rows)} rows, the expanded "
        "weight above"
    ]
    for name, by_rows in measurement.seconds.items():
        times = ", ".join(f"{rows} rows {seconds * 1000:.1f} ms" for rows, seconds in sorted(by_rows.items()))
        lines.append(f"{name}: {times}")
    lines += [f"{name}: refused, {why}" for name, why in measurement.refused.items()]
    lines.append("torchao: not a candidate (its CPU int8 paths measured far slower than PyTorch's kernel)")
    return lines


def _rows(rows: int) -> str:
    return "any number of" if rows >= EVERY else str(rows)
