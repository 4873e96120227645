"""The asyncio front of the local model: one worker thread owns the model.

Each request runs on that thread (preprocessing included, so the event loop
never decodes or resizes images), streams text back to the loop through
``call_soon_threadsafe``, and is stopped at the next decoding step when the
caller stops listening, times out, or the engine shuts down. Requests wait
their turn in the thread's queue; past ``max_queued`` they are refused at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from inference.errors import EngineBusy, EngineUnavailable, InferenceError, RequestTimedOut
from inference.types import EngineConfig, Request, Result

log = logging.getLogger(__name__)


def _default_runner_factory(config: EngineConfig):
    from inference.loading import load
    from inference.runner import ModelRunner

    return ModelRunner(load(config), config)


class LocalEngine:
    """Runs Phi-3-vision in this process. See ``inference.types.Engine`` for the contract."""

    def __init__(self, config: EngineConfig | None = None, runner_factory: Callable | None = None):
        self.config = config or EngineConfig()
        self._runner_factory = runner_factory or _default_runner_factory
        self._runner = None
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._stops: set[threading.Event] = set()
        self._closing = False

    @property
    def ready(self) -> bool:
        return self._runner is not None and not self._closing

    @property
    def in_flight(self) -> int:
        """Requests waiting for or using the model right now."""
        return self._in_flight

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phi3v-model")
        loop = asyncio.get_running_loop()
        try:
            self._runner = await loop.run_in_executor(self._executor, self._runner_factory, self.config)
        except InferenceError:
            self._shutdown_executor()
            raise
        except Exception as exc:
            self._shutdown_executor()
            raise EngineUnavailable(f"The model failed to load: {exc}") from exc

    async def stop(self) -> None:
        self._closing = True
        for stop in list(self._stops):
            stop.set()
        if self._executor is not None:
            loop = asyncio.get_running_loop()
            # Wait for the worker to finish its current step; cancelled requests end at the next token.
            await loop.run_in_executor(None, self._shutdown_executor)
        self._runner = None

    def _shutdown_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    async def generate(self, request: Request) -> Result:
        pieces = []
        result_box: list[Result] = []
        async for piece in self._run(request, result_box):
            pieces.append(piece)
        return result_box[0]

    def stream(self, request: Request) -> AsyncIterator[str]:
        return self._run(request, [])

    async def _run(self, request: Request, result_box: list[Result]) -> AsyncIterator[str]:
        if not self.ready:
            raise EngineUnavailable("The model is not loaded yet (or is shutting down). Try again in a moment.")
        self._runner.validate(request)
        if self._in_flight >= self.config.max_queued:
            raise EngineBusy("I'm busy with other requests right now. Please try again shortly.")
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        stop = threading.Event()

        def on_text(piece: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        self._in_flight += 1
        self._stops.add(stop)
        work = loop.run_in_executor(self._executor, self._runner.run, request, on_text, stop)
        deadline = loop.time() + self.config.request_timeout_s
        try:
            while True:
                next_piece = asyncio.ensure_future(pieces.get())
                done, _ = await asyncio.wait(
                    {next_piece, work}, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                if next_piece in done:
                    yield next_piece.result()
                    continue
                next_piece.cancel()
                if not done:
                    raise RequestTimedOut(
                        f"The answer took longer than {self.config.request_timeout_s:.0f} seconds and was stopped."
                    )
                while not pieces.empty():
                    yield pieces.get_nowait()
                result_box.append(work.result())
                return
        finally:
            stop.set()
            self._stops.discard(stop)
            self._in_flight -= 1
            if not work.done():
                work.add_done_callback(_log_late_failure)


def _log_late_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("Abandoned request ended with %r", future.exception())
