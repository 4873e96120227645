"""The CPU's way to multiply by 8-bit weights is chosen by measurement: wrong candidates are refused whatever
their speed, slow ones are not chosen, and the rows where each way stops paying follow the timings."""

from __future__ import annotations

import torch

from inference.kernels.cpu_int8 import DequantScratch, Int8Linear, choose_products, keep_dense_weights
from inference.kernels.cpu_products import (
    DENSE_COPY,
    EXPANDED,
    INT8_KERNEL,
    Measurement,
    ProductRules,
    describe,
    measure,
    rules_from,
)

WEIGHT = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))


def exact(x: torch.Tensor) -> torch.Tensor:
    return x.float() @ WEIGHT.T


class Clock:
    """Time that passes only as the candidates say: a planted slow one costs a second a call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costing(self, seconds: float):
        def multiply(x: torch.Tensor) -> torch.Tensor:
            self.now += seconds
            return exact(x)

        return multiply


def test_a_wrong_candidate_is_refused_however_fast():
    measurement = measure(
        {"right": exact, "wrong": lambda x: exact(x) * 1.1, "broken": lambda x: x[:, :1]},
        exact,
        in_features=32,
        dtype=torch.float32,
        rows=(1, 4),
        repeats=1,
    )
    assert set(measurement.seconds) == {"right"}
    assert "wrong numbers" in measurement.refused["wrong"] and "broken" in measurement.refused


def test_a_failing_candidate_is_refused_with_its_reason():
    def fails(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel for this CPU\nmore detail")

    measurement = measure({"fails": fails, "right": exact}, exact, 32, torch.float32, rows=(1,), repeats=1)
    assert measurement.refused == {"fails": "failed: no kernel for this CPU"}


def test_a_slow_candidate_is_not_chosen():
    clock = Clock()
    measurement = measure(
        {INT8_KERNEL: clock.costing(1.0), EXPANDED: clock.costing(0.01), DENSE_COPY: clock.costing(0.01)},
        exact,
        32,
        torch.float32,
        rows=(1, 8),
        repeats=1,
        clock=clock,
    )
    assert measurement.seconds[INT8_KERNEL] == {1: 1.0, 8: 1.0}
    rules = rules_from(measurement)
    assert rules.kernel_max_rows == 0 and rules.dense_after_rows == 0  # the slow kernel is never used
    assert rules.measured


def test_the_rows_where_a_way_stops_paying_follow_the_timings():
    measurement = Measurement(
        seconds={
            INT8_KERNEL: {1: 1.0, 16: 2.0, 64: 6.0, 256: 20.0},
            EXPANDED: {1: 5.0, 16: 5.0, 64: 7.0, 256: 9.0},
            DENSE_COPY: {1: 3.0, 16: 1.5, 64: 2.0, 256: 4.0},
        }
    )
    rules = rules_from(measurement)
    assert (rules.kernel_max_rows, rules.dense_after_rows) == (64, 1)
    lines = describe(measurement, rules)
    assert lines[0].startswith("layers with a dense copy: the int8 kernel up to 1 rows, the dense copy above")
    assert "the int8 kernel up to 64 rows, the expanded weight above" in lines[0]
    assert any(line.startswith("torchao: not a candidate") for line in lines)


def test_a_refused_kernel_is_never_used_and_a_refused_copy_never_either():
    no_kernel = Measurement(seconds={EXPANDED: {1: 1.0}}, refused={INT8_KERNEL: "wrong numbers"})
    assert rules_from(no_kernel) == ProductRules(0, 0, measured=True)
    no_copy = Measurement(seconds={INT8_KERNEL: {1: 1.0, 16: 1.0}, EXPANDED: {1: 2.0, 16: 2.0}})
    rules = rules_from(no_copy)
    assert rules.kernel_max_rows == rules.dense_after_rows == 1 << 30


def test_the_start_sets_the_rules_every_layer_shares_and_the_layers_keep_their_numbers():
    torch.manual_seed(3)
    scratch = DequantScratch()
    shared = ProductRules()
    layers = torch.nn.Sequential(
        Int8Linear.rounding(torch.nn.Linear(64, 64, bias=False), scratch, shared),
        Int8Linear.rounding(torch.nn.Linear(64, 128, bias=False), scratch, shared),
    )
    x = torch.randn(40, 64)
    with torch.inference_mode():
        before = layers(x)
        keep_dense_weights(layers, 1 << 20, torch.float32)
        lines = choose_products(layers, torch.float32)
        after = layers(x)
    assert lines is not None and shared.measured
    assert all(layer.rules is shared for layer in layers)
    assert torch.allclose(before, after, rtol=2e-2, atol=2e-2)  # whichever way was chosen, the same numbers
    assert any(line.startswith(INT8_KERNEL) for line in lines)


def test_a_model_without_8bit_layers_measures_nothing():
    assert choose_products(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.float32) is None
