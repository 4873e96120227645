"""How a fast path proves itself at start-up, on the device it will serve from, before anyone is served.

Each fast path is compared with the plain path it replaces, at the model's own shapes, by a check that lives
beside it:

- the attention backends: :func:`inference.kernels.attention_backends.choose_backend` (the fastest that
  agrees with the plain one), and :func:`~inference.kernels.attention_backends.check_causal_bias` (a prompt's
  later chunk attending without a mask);
- the fused RMSNorm: :func:`inference.kernels.norms.check_fused_norm`;
- the rotary embedding and KV write in one Triton kernel:
  :func:`inference.kernels.fused_attention.check_fused_rope`;
- decoding steps replayed from CUDA graphs: :func:`inference.serving.decode_step.verify_graphs`.

This module holds what they share: the tolerance per dtype, how a disagreement is described, timing, and
the rule for errors. A fast path that raises an ordinary error is not used (one log line says why). One that
breaks the device (a CUDA error: every later call in the process fails) ends the start with
:class:`SelfCheckFailed`, never a half-working engine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from inference.errors import EngineUnavailable

# Per element: |candidate − reference| <= TOLERANCE * (1 + |reference|), by the dtype the model runs in.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-4}
TIMED_RUNS = 5
# Messages of errors after which CUDA refuses all further work in this process.
FATAL_DEVICE_ERRORS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS")


class SelfCheckFailed(EngineUnavailable):
    """A fast path broke the device while it was being checked: the engine cannot start."""


def is_fatal(error: BaseException) -> bool:
    """True for an error after which the device cannot be trusted (a CUDA error poisons the context)."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and any(mark in str(error) for mark in FATAL_DEVICE_ERRORS)


def short(error: BaseException) -> str:
    """An error in one line of at most 300 characters, for the log."""
    return f"{type(error).__name__}: {error}"[:300]


def reason_unless_fatal(error: Exception, part: str) -> str:
    """Why ``part`` is not used, for the log; an error that broke the device ends the start instead."""
    if is_fatal(error):
        raise SelfCheckFailed(
            f"{part} broke the GPU during its start-up check ({short(error)}). Restart the bot; if this "
            "happens again, update PyTorch and the NVIDIA driver."
        ) from error
    return short(error)


def disagreement(
    out: torch.Tensor, reference: torch.Tensor, tolerance: float, plain: str = "the plain kernel's"
) -> str | None:
    """None when every element agrees; else where the worst one is, for the log."""
    out = out.float()
    excess = (out - reference).abs() - tolerance * (1 + reference.abs())
    if bool(torch.isfinite(out).all()) and float(excess.max()) <= 0:
        return None
    bad = int((excess > 0).sum()) if bool(torch.isfinite(out).all()) else int((~torch.isfinite(out)).sum())
    worst = float((out - reference).abs().nan_to_num(float("inf")).max())
    return f"{bad} of {out.numel()} values differ from {plain}, by up to {worst:.3g}"


def time_ms(call: Callable[[], object], device: torch.device) -> float:
    """The median time of :data:`TIMED_RUNS` calls, after one untimed call that compiles or plans."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()
    sync()
    times = []
    for _ in range(TIMED_RUNS):
        started = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
