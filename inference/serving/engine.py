"""The asyncio front of the local model (vLLM's shape at small scale).

    stream(request) ──► prepare on a CPU thread (prompt, images -> tensors)
                    ──► Scheduler.add (bounded, fair)      ──► "busy" at once when full
    driver task     ──► Scheduler.admit ──► ModelRunner.step on the model thread (batched)

The scheduler's token budget is the runner's: set at start-up, when the KV cache has been sized.
                    ──► text pieces routed to each request's own queue

One thread owns the model. The driver task exists only while there is work,
so an idle engine leaves nothing running on the event loop. A request that
is cancelled, times out or whose reader goes away is aborted: dropped from the
queue, or from the batch at the next decoding step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from inference.errors import (
    EngineBusy,
    EngineDead,
    EngineStopping,
    EngineUnavailable,
    InferenceError,
    NotReady,
    OutOfMemory,
    RequestTimedOut,
    TooLarge,
)
from inference.serving.block_pool import BLOCK_TOKENS
from inference.serving.model_thread import StepFailure, run_steps
from inference.serving.runner_protocol import Runner
from inference.serving.scheduler import DoesNotFit, QueueFull, Scheduler, Ticket, rope_regime
from inference.types import (
    DEFAULT_REQUEST_TIMEOUT_S,
    TYPICAL_ANSWER_TOKENS,
    EngineConfig,
    EngineStats,
    Place,
    PlacesHeld,
    Priority,
    Request,
    Result,
)

if TYPE_CHECKING:
    from inference.prepare import Prepared
    from inference.serving.pace import Pace

log = logging.getLogger(__name__)

# Threads that turn images into tensors beside the model thread: one per four CPU cores (1 to 4), so that
# on a small machine they do not crowd out the model thread and the event loop.
PREP_THREADS = max(1, min(4, (os.cpu_count() or 1) // 4))
# Model steps that may fail in a row before the engine gives up on the model (a broken GPU would
# otherwise fail every request forever); one success resets the count.
MAX_STEP_FAILURES = 3
ANSWER_TIME_WEIGHT = 0.3  # how much the latest answer moves the measured answer time


def _default_runner_factory(config: EngineConfig) -> Runner:
    from inference.loading import load
    from inference.serving.startup import start_runner

    return start_runner(load(config), config)


@dataclass
class _Channel:
    """Where the driver delivers one request's output."""

    pieces: asyncio.Queue = field(default_factory=asyncio.Queue)
    on_position: Callable[[int], None] | None = None
    position: int | None = None
    prepared: Prepared | None = None
    new_tokens: int = 0
    answering_since: float | None = None  # the event loop's time when it was admitted

    def tell_position(self, position: int) -> None:
        if position != self.position:
            self.position = position
            if self.on_position is not None:
                try:
                    self.on_position(position)
                except Exception:  # a display callback must never break the engine
                    log.exception("on_position callback failed")


_DONE = object()


class LocalEngine:
    """Runs Phi-3-vision in this process. See ``inference.types.Engine`` for the contract."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        runner_factory: Callable[[EngineConfig], Runner] | None = None,
    ):
        self.config = config or EngineConfig()
        self._runner_factory = runner_factory or _default_runner_factory
        self._runner: Runner | None = None
        self._model_thread: ThreadPoolExecutor | None = None
        self._prep_threads: ThreadPoolExecutor | None = None
        # Until the runner exists its budget is unknown; nothing is admitted before that.
        self.scheduler = Scheduler(
            self.config.max_batch_size,
            self.config.max_queued,
            self.config.token_budget or 1,
            block_tokens=BLOCK_TOKENS,  # until the runner says its own
        )
        self._channels: dict[int, _Channel] = {}
        self._places = PlacesHeld()  # promised to requests not queued yet (pictures on the way, preparing)
        self._preparing = 0  # requests on (or waiting for) a preparing thread, not yet queued
        self._aborted: list[int] = []
        # Set by the event loop when the model thread should hand back control at its next step:
        # a request arrived or was aborted. Until then the thread decodes step after step by itself.
        self._needs_driver = threading.Event()
        self._ids = itertools.count(1)
        self._driver: asyncio.Task | None = None
        self._closing = False
        self._step_failures = 0
        self._totals = EngineStats()
        self.dead_reason: str | None = None
        self._answer_s: float | None = None  # how long an answer runs, recent ones weighing most
        # Called once (on the event loop) when the engine gives up on the model.
        self.on_dead: Callable[[str], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._runner is not None and not self._closing and self.dead_reason is None

    def stats(self) -> EngineStats:
        """A snapshot: the line, the batch, and totals since start."""
        totals = self._totals
        return EngineStats(
            waiting=self.scheduler.num_waiting,
            running=len(self.scheduler.running),
            tokens_generated=totals.tokens_generated,
            answers_finished=totals.answers_finished,
            out_of_memory=totals.out_of_memory,
            step_failures=totals.step_failures,
            dead=self.dead_reason is not None,
            **self._hardware(),
        )

    def _hardware(self) -> dict:
        if self._runner is None:
            return {}
        runner = self._runner
        return {
            "hardware": runner.hardware_text,
            "memory_bytes": runner.memory_bytes(),
            "prompt_tokens_reused": runner.reused_tokens,
        }

    @property
    def in_flight(self) -> int:
        """Requests being prepared, waiting or running right now."""
        return len(self._channels)

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._closing = False
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phi3v-model")
        self._prep_threads = ThreadPoolExecutor(max_workers=PREP_THREADS, thread_name_prefix="phi3v-prepare")
        loop = asyncio.get_running_loop()
        try:
            runner = await loop.run_in_executor(self._model_thread, self._runner_factory, self.config)
            self._runner = runner
            self.scheduler.token_budget = runner.token_budget
            self.scheduler.block_tokens = runner.block_tokens
        except InferenceError:
            await self._shutdown_threads()
            raise
        except Exception as exc:
            await self._shutdown_threads()
            raise EngineUnavailable(f"The model failed to load: {exc}") from exc

    async def stop(self) -> None:
        """Fail every open request with a clear message, finish the current step, free the threads."""
        self._closing = True  # from here on no place in line is announced
        for request_id, channel in list(self._channels.items()):
            self._abort(request_id)
            channel.pieces.put_nowait(EngineStopping())
        if self._driver is not None:
            await asyncio.gather(self._driver, return_exceptions=True)
        await self._shutdown_threads()
        self._runner = None

    async def _shutdown_threads(self) -> None:
        pools = [p for p in (self._model_thread, self._prep_threads) if p is not None]
        self._model_thread = self._prep_threads = None
        for pool in pools:
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)

    # -- requests ------------------------------------------------------------------------------
    @property
    def picture_crops(self) -> int | None:
        return self._runner.num_crops if self._runner is not None else None

    def hold_place(self, priority: Priority = Priority.PEOPLE, group_id: int | None = None) -> Place:
        """A place in line before the request exists: the places held and the requests queued together stay
        within ``max_queued`` (a background line of its own), a server's within half of that, so a request
        given a place is never refused when it is queued."""
        self._check_ready()
        scheduler, places = self.scheduler, self._places
        if scheduler.is_full(priority, held=places.count(priority)) or scheduler.group_is_full(
            priority, group_id, held=places.count_for(priority, group_id)
        ):
            raise EngineBusy()
        return places.take(priority, group_id)

    async def generate(self, request: Request, *, place: Place | None = None) -> Result:
        started = time.perf_counter()
        channel = _Channel()
        pieces = [piece async for piece in self._stream(request, channel, place=place)]
        return Result("".join(pieces).strip(), channel.new_tokens, time.perf_counter() - started)

    def stream(
        self,
        request: Request,
        on_position: Callable[[int], None] | None = None,
        on_trimmed: Callable[[int], None] | None = None,
        *,
        place: Place | None = None,
    ) -> AsyncIterator[str]:
        return self._stream(request, _Channel(on_position=on_position), on_trimmed, place=place)

    async def _stream(
        self,
        request: Request,
        channel: _Channel,
        on_trimmed: Callable[[int], None] | None = None,
        *,
        place: Place | None = None,
    ) -> AsyncIterator[str]:
        self._check_ready()
        self._live_runner.validate(request)
        if place is None:
            place = self.hold_place(request.priority, request.group_id)
        loop = asyncio.get_running_loop()
        time_limit = request.time_limit(self.request_timeout_s)
        deadline = loop.time() + time_limit
        request_id = next(self._ids)
        self._channels[request_id] = channel
        finished = False
        try:
            with place:  # given back once the request is queued, where the scheduler counts it
                self._preparing += 1
                try:
                    channel.prepared = await loop.run_in_executor(
                        self._prep_threads, self._live_runner.prepare, request
                    )
                finally:
                    self._preparing -= 1
                self._check_ready()
                if channel.prepared.left_out and on_trimmed is not None:
                    on_trimmed(channel.prepared.left_out)
                self._enqueue(request_id, request, channel)
            while True:
                remaining = deadline - loop.time()
                try:
                    item = await asyncio.wait_for(channel.pieces.get(), timeout=max(remaining, 0))
                except TimeoutError:
                    raise RequestTimedOut(time_limit) from None
                if item is _DONE:
                    finished = True
                    return
                if isinstance(item, Exception):
                    finished = True
                    raise item
                yield item
        finally:
            self._channels.pop(request_id, None)
            if not finished:
                self._abort(request_id)

    def _check_ready(self) -> None:
        if self.dead_reason is not None:
            raise EngineDead(self.dead_reason)
        if self._closing:
            raise EngineStopping()
        if self._runner is None:
            raise NotReady()

    def _enqueue(self, request_id: int, request: Request, channel: _Channel) -> None:
        prepared = channel.prepared
        assert prepared is not None  # prepared before it is queued
        ticket = Ticket(
            request_id=request_id,
            user_id=request.user_id,
            prompt_tokens=prepared.prompt_tokens,
            max_new_tokens=prepared.max_new_tokens,
            regime=rope_regime(
                prepared.prompt_tokens, prepared.max_new_tokens, self._live_runner.rope_switch
            ),
            priority=request.priority,
            group_id=request.group_id,
        )
        try:
            self.scheduler.add(ticket)
        except QueueFull:
            raise EngineBusy() from None
        except DoesNotFit as exc:
            raise TooLarge(exc.tokens, exc.capacity) from None
        self._announce_positions()
        self._needs_driver.set()
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="phi3v-engine")

    def _abort(self, request_id: int) -> None:
        was_running = any(t.request_id == request_id for t in self.scheduler.running)
        if self.scheduler.abort(request_id) and was_running:
            self._aborted.append(request_id)
            self._needs_driver.set()
        self._announce_positions()

    def _announce_positions(self) -> None:
        if self._closing:
            return  # the stop message is the last thing a waiting person sees
        for request_id, position in self.scheduler.positions().items():
            channel = self._channels.get(request_id)
            if channel is not None:
                channel.tell_position(position)

    # -- the driver ----------------------------------------------------------------------------
    async def _drive(self) -> None:
        """Step the batch until there is nothing left to do, then end (an idle engine runs no task)."""
        loop = asyncio.get_running_loop()
        if not self.scheduler.running and self._preparing and self.config.batch_window_ms > 0:
            # More requests are on their way (being prepared): let them arrive together. A lone one
            # starts at once. The idle model thread does the waiting, so the window is plain
            # wall-clock time whatever clock the event loop is given.
            await loop.run_in_executor(self._model_thread, time.sleep, self.config.batch_window_ms / 1000)
        while (self.scheduler.has_work() or self._aborted) and self._model_thread is not None:
            admitted = self.scheduler.admit()
            admit = []
            for ticket in admitted:
                channel = self._channels.get(ticket.request_id)
                if channel is None:  # went away while waiting
                    self.scheduler.finish(ticket.request_id)
                    continue
                channel.tell_position(0)
                channel.answering_since = loop.time()
                admit.append((ticket.request_id, channel.prepared))
                channel.prepared = None
            aborted, self._aborted = self._aborted, []
            self._announce_positions()
            self._needs_driver.clear()
            events, failure = await loop.run_in_executor(
                self._model_thread,
                run_steps,
                self._live_runner,
                admit,
                aborted,
                self._needs_driver,
                lambda events: loop.call_soon_threadsafe(self._route, events),
            )
            self._route(events)
            if failure is None:
                self._step_failures = 0
            else:
                self._step_failed(failure)

    def _step_failed(self, failure: StepFailure) -> None:
        """After a failed step (its requests already failed): count it, and give up on a broken model."""
        self._step_failures += 1
        self._totals.step_failures += 1
        if failure.fatal:
            self._die(f"the device reported an unrecoverable error ({failure.summary})")
        elif self._step_failures >= MAX_STEP_FAILURES:
            self._die(f"{self._step_failures} model steps failed in a row (last: {failure.summary})")

    def _die(self, reason: str) -> None:
        """Stop taking requests for good; fail the waiting ones; tell the owner once."""
        if self.dead_reason is not None:
            return
        self.dead_reason = reason
        log.error("The model is unavailable and the engine stops taking requests: %s", reason)
        for ticket in self.scheduler.waiting_order():  # those still being prepared fail when they queue
            self.scheduler.abort(ticket.request_id)
            self._deliver(ticket.request_id, EngineDead(self.dead_reason))
        if self.on_dead is not None:
            try:
                self.on_dead(reason)
            except Exception:
                log.exception("on_dead callback failed")

    def _route(self, events: list) -> None:
        """Hand each request its new text; a finished one leaves the scheduler."""
        totals = self._totals
        for event in events:
            channel = self._channels.get(event.request_id)
            if channel is not None:
                totals.tokens_generated += max(event.new_tokens - channel.new_tokens, 0)
                channel.new_tokens = event.new_tokens
            if event.text:
                self._deliver(event.request_id, event.text)
            if event.finished:
                self.scheduler.finish(event.request_id)
                self._deliver(event.request_id, event.error or _DONE)
                if event.error is None:
                    totals.answers_finished += 1
                    self._measure_answer(channel)
                elif isinstance(event.error, OutOfMemory):
                    totals.out_of_memory += 1

    def _measure_answer(self, channel: _Channel | None) -> None:
        if channel is None or channel.answering_since is None:
            return
        seconds = asyncio.get_running_loop().time() - channel.answering_since
        if self._answer_s is None:
            self._answer_s = seconds
        else:
            self._answer_s += ANSWER_TIME_WEIGHT * (seconds - self._answer_s)

    def wait_s(self, position: int) -> float | None:
        """Roughly how long the request at ``position`` (1 = next) waits before its answer starts: as many
        answers must end first, and the running ones end at the pace measured so far (the answers finished
        lately, or before any, the start's speed measurement on a CPU). None when there is nothing to go
        by."""
        answer_s = self._answer_s
        if answer_s is None and self._pace is not None:
            answer_s = self._pace.answer_s(self._live_runner.num_crops, TYPICAL_ANSWER_TOKENS)
        if answer_s is None or position < 1:
            return None
        return position * answer_s / max(len(self.scheduler.running), 1)

    @property
    def request_timeout_s(self) -> float:
        """How long one request may take, waiting included: ``REQUEST_TIMEOUT_S``, or for ``auto`` 180 s
        where the model is fast, and on a CPU what its measured speed needs (``Pace.request_timeout_s``)."""
        if self.config.request_timeout_s is not None:
            return self.config.request_timeout_s
        if self._pace is None:
            return DEFAULT_REQUEST_TIMEOUT_S
        return self._pace.request_timeout_s(self._live_runner.num_crops, self.config.max_new_tokens)

    @property
    def _live_runner(self) -> Runner:
        """The runner, once started (the callers have checked that it is)."""
        if self._runner is None:
            raise NotReady()
        return self._runner

    @property
    def _pace(self) -> Pace | None:
        """The runner's measured speed (a CPU's), or None: none measured, or no runner yet."""
        return self._runner.pace if self._runner is not None else None

    def _deliver(self, request_id: int, item) -> None:
        channel = self._channels.get(request_id)
        if channel is not None:
            channel.pieces.put_nowait(item)
