"""Test doubles for the inference engine and the CDN download. Never imported by product code."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from inference import Request, Result

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
        self.places_in_line: list[int] = []  # reported to on_position before answering, then 0
        self._gate: asyncio.Event | None = None
        self._gate_env: Any = None
        self._hold_after = 0

    def hold(self, env: Any, *, after_pieces: int = 0) -> None:
        """Make requests wait (as a declared simcord external wait) until :meth:`release`.

        With ``after_pieces`` the answer streams that many pieces first, then waits.
        """
        self._gate = asyncio.Event()
        self._gate_env = env
        self._hold_after = after_pieces

    async def _wait_if_held(self) -> None:
        if self._gate is not None and not self._gate.is_set():
            await self._gate_env.external_wait(self._gate.wait(), reason="the test is holding the engine")

    def release(self) -> None:
        assert self._gate is not None
        self._gate.set()

    def answer_next(self, *answers: str | BaseException | Interrupted) -> None:
        self.answers.extend(answers)

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def _next_answer(self) -> str | BaseException | Interrupted:
        return self.answers.popleft() if self.answers else self.default_answer

    async def stream(
        self, request: Request, on_position: Callable[[int], None] | None = None
    ) -> AsyncIterator[str]:
        self.requests.append(request)
        answer = self._next_answer()
        try:
            for position in [*self.places_in_line, 0] if on_position is not None else []:
                on_position(position)
                await asyncio.sleep(0)
            if self._hold_after == 0:
                await self._wait_if_held()
            if isinstance(answer, BaseException):
                await asyncio.sleep(0)
                raise answer
            text = answer.text if isinstance(answer, Interrupted) else answer
            for count, index in enumerate(range(0, len(text), self.piece_size)):
                if count and count == self._hold_after:
                    await self._wait_if_held()
                await asyncio.sleep(0)
                yield text[index : index + self.piece_size]
            if isinstance(answer, Interrupted):
                raise answer.error
        finally:
            self.closed_streams += 1

    async def generate(self, request: Request) -> Result:
        started = time.perf_counter()
        pieces = [piece async for piece in self.stream(request)]
        text = "".join(pieces)
        return Result(text=text, new_tokens=len(pieces), seconds=time.perf_counter() - started)


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
        self.urls.append(url)
        data: bytes = await self._get_http().get_from_cdn(url)
        return data
