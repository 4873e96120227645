"""Helpers shared by the serving benchmarks (``loop_lag.py`` and ``throughput.py``). Benchmark-only.

- :class:`FixedLengthRunner`: the real runner with its stop tokens switched
  off, so every answer is exactly ``max_new_tokens`` long whatever random weights pick (fair, steady
  load), and with the clocks the serving figures need;
- :class:`InlineExecutor` and :class:`OnLoopEngine`: the same ``LocalEngine`` with the work it
  normally sends to threads run on the event loop's own thread instead (the naive way, for contrast);
- small statistics and reporting helpers.
"""

from __future__ import annotations

import concurrent.futures
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import transformers

from inference.decoding import Event
from inference.loading import LoadedModel
from inference.prepare import Prepared
from inference.serving.engine import LocalEngine
from inference.serving.startup import start_runner
from inference.types import EngineConfig

MS = 1000.0


class FixedLengthRunner:
    """The runner, never stopping at an end token: each answer has exactly its max_new_tokens.

    It also counts the tokens it generated, notes when each request got tokens (``token_times``, for
    the gap a running answer sees) and times the runner's joins and leaves (``join_leave_s``: the
    block bookkeeping), waiting for the device in each so
    the time is the work's and not just its launch. Everything else goes to the runner it wraps.
    """

    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        runner = start_runner(loaded, config)
        runner.stop_ids = set()
        self.runner = runner
        self.tokens_generated = 0
        self.token_times: dict[int, list[float]] = defaultdict(list)
        self.join_leave_s: list[float] = []
        for name in ("_join", "_leave"):
            setattr(runner, name, self._timed(getattr(runner, name), loaded.device))

    def _timed(self, method: Callable, device: torch.device) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.join_leave_s.append(time.perf_counter() - started)

        return timed

    def step(self, admit: list[tuple[int, Prepared]], abort: list[int]) -> list[Event]:
        events = self.runner.step(admit, abort)
        now = time.perf_counter()
        for event in events:
            if event.error is None:
                self.token_times[event.request_id].append(now)
        self.tokens_generated += sum(event.new_tokens for event in events if event.finished)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


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
