"""Helpers shared by the serving benchmarks (``loop_lag.py`` and ``throughput.py``). Benchmark-only.

- :class:`FixedLengthRunner`: the real ``ModelRunner`` with its stop tokens switched off, so every
  answer is exactly ``max_new_tokens`` long whatever random weights pick (fair, steady load);
- :class:`InlineExecutor` and :class:`OnLoopEngine`: the same ``LocalEngine`` with the work it
  normally sends to threads run on the event loop's own thread instead (the naive way, for contrast);
- small statistics and reporting helpers.
"""

from __future__ import annotations

import concurrent.futures
import platform
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import transformers

from inference.engine import LocalEngine
from inference.runner import Event, ModelRunner, Prepared

MS = 1000.0


class FixedLengthRunner(ModelRunner):
    """``ModelRunner`` that never stops at an end token: each answer has exactly its max_new_tokens.

    It also counts the tokens it generated, so a benchmark can check the work done.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_ids: set[int] = set()
        self.tokens_generated = 0

    def step(self, admit: list[tuple[int, Prepared]], abort: list[int]) -> list[Event]:
        events = super().step(admit, abort)
        self.tokens_generated += sum(event.new_tokens for event in events if event.finished)
        return events


class InlineExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once, on the calling thread, and hands back a finished future.

    An exception propagates from ``submit`` itself, so ``await loop.run_in_executor(...)`` raises it
    in the calling coroutine just as it would after a thread pool had run the call.
    """

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


class OnLoopEngine(LocalEngine):
    """BENCHMARK-ONLY: ``LocalEngine`` with preprocessing and model steps run on the event loop thread.

    The scheduler, batching and streaming are unchanged; only the two thread pools are replaced,
    after the model has loaded, by :class:`InlineExecutor`. This is what calling the runner
    synchronously from a coroutine does to the event loop.
    """

    async def start(self) -> None:
        await super().start()
        pools = (self._model_thread, self._prep_threads)
        self._model_thread = self._prep_threads = InlineExecutor()
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True)


def percentiles_ms(seconds: Sequence[float], points: Sequence[int]) -> dict[str, float]:
    """``{"p50": .., "p99": .., "max": ..}`` of durations given in seconds, reported in milliseconds."""
    values = np.asarray(seconds, dtype=np.float64) * MS
    summary = {f"p{point}": round(float(np.percentile(values, point)), 3) for point in points}
    summary["max"] = round(float(values.max()), 3)
    return summary


def versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
