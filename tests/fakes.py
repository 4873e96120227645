"""Test doubles: the inference engine, the model runner, the CDN download. Never imported by product code."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import discord

from inference import EngineBusy, Priority, Request, Result
from inference.errors import EngineStopping
from inference.types import EngineStats, Place, PlacesHeld

DEFAULT_ANSWER = "A small red square on a white background."


@dataclass(frozen=True)
class Interrupted:
    """A scripted answer that streams ``text`` and then fails with ``error``."""

    text: str
    error: BaseException


class FakeEngine:
    """Implements the ``inference.Engine`` protocol with scripted answers and failures.

    ``answers`` is a queue: each request takes the next item (a string to answer,
    or an exception to raise); when it is empty, ``default_answer`` is used.
    ``piece_size`` controls how the answer is cut into streamed pieces.
    An :class:`Interrupted` answer streams some text, then raises.
    Like the real engines, :meth:`stop` ends every open stream with ``EngineStopping``.
    """

    def __init__(self, default_answer: str = DEFAULT_ANSWER, *, piece_size: int = 8) -> None:
        self.default_answer = default_answer
        self.piece_size = piece_size
        self.answers: deque[str | BaseException | Interrupted] = deque()
        self.requests: list[Request] = []
        self.start_error: BaseException | None = None
        self.started = False
        self.stopped = False
        self.closed_streams = 0
        self.places_in_line: list[int] = []  # reported to on_position (then a hold, if any), then 0
        self.wait_estimate_s: float | None = None  # what wait_s answers for every place in line
        self.left_out_next = 0  # old exchanges the next follow-up "leaves out", told to on_trimmed
        self._gate: asyncio.Event | None = None
        self._gate_env: Any = None
        self._hold_after = 0
        self._stopping: asyncio.Event | None = None
        self.on_dead: Callable[[str], None] | None = None
        self.dead_reason: str | None = None
        self.picture_crops: int | None = None  # like a model server: pictures kept at the largest canvas
        self.places = PlacesHeld()
        self.places_given: list[Place] = []  # every place handed out, to check the order of things

    def wait_s(self, position: int) -> float | None:
        return self.wait_estimate_s

    def hold_place(self, priority: Priority = Priority.PEOPLE, group_id: int | None = None) -> Place:
        self._raise_if_stopped()
        self._refuse_if_full(priority)
        place = self.places.take(priority, group_id)
        self.places_given.append(place)
        return place

    def _refuse_if_full(self, priority: Priority) -> None:
        """This fake's line has no end (see SlottedFakeEngine)."""

    def stats(self) -> EngineStats | None:
        return None  # tests that need figures give the fake a stats function of their own

    def hold(self, env: Any, *, after_pieces: int = 0) -> None:
        """Make requests wait (as a declared simcord external wait) until :meth:`release`.

        With ``after_pieces`` the answer streams that many pieces first, then waits.
        """
        self._gate = asyncio.Event()
        self._gate_env = env
        self._hold_after = after_pieces

    def _stop_event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    async def _wait_if_held(self) -> None:
        if self._gate is not None and not self._gate.is_set():
            await self._gate_env.external_wait(self._gate.wait(), reason="the test is holding the engine")
        self._raise_if_stopped()

    def _raise_if_stopped(self) -> None:
        if self._stopping is not None and self._stopping.is_set():
            raise EngineStopping()

    def release(self) -> None:
        assert self._gate is not None
        self._gate.set()

    def answer_next(self, *answers: str | BaseException | Interrupted) -> None:
        self.answers.extend(answers)

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True
        self._stopping = None

    async def stop(self) -> None:
        self.stopped = True
        self._stop_event().set()
        if self._gate is not None:
            self._gate.set()  # held streams wake up and end
        await asyncio.sleep(0)  # let open streams see it, as the real engine's stop does

    def _next_answer(self) -> str | BaseException | Interrupted:
        return self.answers.popleft() if self.answers else self.default_answer

    async def stream(
        self,
        request: Request,
        on_position: Callable[[int], None] | None = None,
        on_trimmed: Callable[[int], None] | None = None,
        *,
        place: Place | None = None,
    ) -> AsyncIterator[str]:
        self._raise_if_stopped()
        (place or self.hold_place(request.priority, request.group_id)).release()  # given back: in line now
        self.requests.append(request)
        answer = self._next_answer()
        if request.history and self.left_out_next and on_trimmed is not None:
            on_trimmed(self.left_out_next)
            self.left_out_next = 0
        token = object()  # this stream, for the hooks below
        await self._enter(on_position, token)
        try:
            if on_position is not None:
                on_position(0)
            if isinstance(answer, BaseException):
                await asyncio.sleep(0)
                raise answer
            text = answer.text if isinstance(answer, Interrupted) else answer
            for count, index in enumerate(range(0, len(text), self.piece_size)):
                if count and count == self._hold_after:
                    await self._wait_if_held()
                await self._between_pieces(token)
                self._raise_if_stopped()
                yield text[index : index + self.piece_size]
            if isinstance(answer, Interrupted):
                raise answer.error
        finally:
            self.closed_streams += 1
            self._leave(token)

    async def _enter(self, on_position: Callable[[int], None] | None, token: object) -> None:
        """Before answering: the scripted places in line, then the hold (if any)."""
        for position in self.places_in_line if on_position is not None else []:
            on_position(position)
            await asyncio.sleep(0)
        if self._hold_after == 0:
            await self._wait_if_held()  # still in line while held

    async def _between_pieces(self, token: object) -> None:
        await asyncio.sleep(0)

    def _leave(self, token: object) -> None:
        """After an answer: nothing to free, this fake answers everyone at once (see SlottedFakeEngine)."""

    async def generate(self, request: Request, *, place: Place | None = None) -> Result:
        started = time.perf_counter()
        pieces = [piece async for piece in self.stream(request, place=place)]
        text = "".join(pieces)
        return Result(text=text, new_tokens=len(pieces), seconds=time.perf_counter() - started)


@dataclass(eq=False)
class _Waiter:
    woken: asyncio.Event
    on_position: Callable[[int], None] | None
    position: int = 0


class SlottedFakeEngine(FakeEngine):
    """A :class:`FakeEngine` that answers ``slots`` requests at once, like the real engine's batch.

    The others wait in line and are told their places as the line moves; past ``max_waiting``
    a request is refused as busy. Each piece takes ``piece_delay_s`` of simcord's virtual time,
    so answers stream while the test advances the clock.
    """

    def __init__(self, env: Any, *, slots: int = 8, max_waiting: int = 64, piece_delay_s: float = 0.25, **kw):
        super().__init__(**kw)
        self.env = env
        self.slots = slots
        self.max_waiting = max_waiting
        self.piece_delay_s = piece_delay_s
        self.running = 0
        self.line: list[_Waiter] = []
        self.busy_refusals = 0
        self._answering: set[object] = set()
        self._doomed: set[object] = set()
        self._doom: BaseException | None = None

    def _refuse_if_full(self, priority: Priority) -> None:
        """Places held before the pictures arrive count as waiting, as in the real engine."""
        if len(self.line) + self.places.count(priority) >= self.max_waiting:
            self.busy_refusals += 1
            raise EngineBusy()

    def fail_running(self, error: BaseException) -> int:
        """Every answer running now fails with ``error`` at its next piece (e.g. out of memory)."""
        self._doomed, self._doom = set(self._answering), error
        return len(self._doomed)

    async def _enter(self, on_position: Callable[[int], None] | None, token: object) -> None:
        if self.running < self.slots:
            self.running += 1
            self._answering.add(token)
            try:
                await self._wait_if_held()  # (:meth:`hold`) the answer waits for the test
            except BaseException:
                self._leave(token)
                raise
            return
        waiter = _Waiter(asyncio.Event(), on_position)
        self.line.append(waiter)
        self._announce()
        try:
            await self.env.external_wait(waiter.woken.wait(), reason="waiting in the fake engine's line")
        except BaseException:
            if waiter in self.line:
                self.line.remove(waiter)
                self._announce()
            else:
                self._leave(token)  # woken and given a slot at the moment it was cancelled
            raise
        self._answering.add(token)
        self._raise_if_stopped()  # the slot it was given is freed by _leave

    async def _between_pieces(self, token: object) -> None:
        await asyncio.sleep(self.piece_delay_s)
        if token in self._doomed and self._doom is not None:
            self._doomed.discard(token)
            raise self._doom

    def _leave(self, token: object) -> None:
        self._answering.discard(token)
        if self.line and not self._is_stopping():
            waiter = self.line.pop(0)  # the slot passes to the first in line
            waiter.woken.set()
            self._announce()
        else:
            self.running -= 1

    def _is_stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def _announce(self) -> None:
        if self._is_stopping():
            return
        for index, waiter in enumerate(self.line, start=1):
            if waiter.position != index:
                waiter.position = index
                if waiter.on_position is not None:
                    waiter.on_position(index)

    async def stop(self) -> None:
        self._stop_event().set()
        for waiter in self.line:
            waiter.woken.set()
        await super().stop()


class ScriptedRunner:
    """Stands in for the model: each request yields "tok0 tok1 ..." one token per step.

    ``hold`` pauses every step until released; ``fail_next`` makes the next admitted request fail.
    """

    rope_switch = 4096
    pace = None  # a GPU's: no speed measured at start
    num_crops = 16
    hardware_text = "scripted, no model"
    reused_tokens = 0  # no KV cache
    block_tokens = 256

    def memory_bytes(self):
        return None

    def __init__(self, config):
        self.config = config
        self.token_budget = config.token_budget or 24_576  # the real runner sizes "auto" from memory
        self.step_errors: list[Exception] = []  # raised by the next steps, one each
        self.generated: dict[int, int] = {}
        self.reset_threads: list[str] = []
        self.rows: dict[int, int] = {}
        self.hold = threading.Event()
        self.hold.set()
        self.fail_next: Exception | None = None
        self.steps = 0
        self.step_seconds = 0.0
        self.dropped: list[int] = []

    def validate(self, request):
        from inference.prompts import check_image_count

        check_image_count(len(request.images), self.config.max_images, request.task)

    def prepare(self, request):
        self.validate(request)
        return type(
            "Prepared",
            (),
            {"prompt_tokens": 10, "max_new_tokens": request.max_new_tokens or 3, "left_out": 0},
        )()

    def reset(self):
        self.reset_threads.append(threading.current_thread().name)
        self.rows.clear()

    def is_fatal(self, error):
        from inference.kernels.checks import is_fatal

        return is_fatal(error)

    @property
    def running_ids(self):
        return list(self.rows)

    def step(self, admit, abort):
        from inference.decoding import Event

        self.hold.wait(10)
        time.sleep(self.step_seconds)
        self.steps += 1
        for rid, _ in admit:
            self.rows.setdefault(rid, 0)  # in the batch from now on, as in the real runner
        if self.step_errors:
            raise self.step_errors.pop(0)
        events = []
        for rid in abort:
            self.rows.pop(rid, None)
            self.dropped.append(rid)
        for rid, prepared in admit:
            if self.fail_next is not None:
                error, self.fail_next = self.fail_next, None
                events.append(Event(rid, error=error, finished=True))
                del self.rows[rid]
                continue
            self.rows[rid] = prepared.max_new_tokens
        for rid in list(self.rows):
            left = self.rows[rid] - 1
            self.generated[rid] = self.generated.get(rid, 0) + 1  # cumulative, as the real runner reports
            events.append(Event(rid, f"tok{left} ", finished=left == 0, new_tokens=self.generated[rid]))
            self.rows[rid] = left
            if left == 0:
                del self.rows[rid]
        return events


class SimcordCdnFetcher:
    """Downloads through the bot's discord.py HTTP client, which simcord serves from its fake CDN.

    The production ``HttpFetcher`` uses its own aiohttp session, which simcord
    cannot see; this stand-in keeps every other step (host check, size limits,
    decoding in a worker thread) exactly as in production.
    """

    def __init__(self, get_http: Callable[[], Any]) -> None:
        self._get_http = get_http
        self.urls: list[str] = []

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        from bot.images import GONE_REASON, DownloadError

        self.urls.append(url)
        try:
            data: bytes = await self._get_http().get_from_cdn(url)
        except discord.NotFound:  # as HttpFetcher says of a 404
            raise DownloadError(GONE_REASON) from None
        return data
