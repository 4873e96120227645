"""Showing an answer on Discord: live edits while it streams, then the final text split to fit.

Where the answer goes is an :class:`AnswerTarget`: the deferred response of a
slash command or context menu (:class:`InteractionTarget`), or a reply the bot
posts and edits for a prefix command (:class:`MessageTarget`).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, nullcontext
from typing import TYPE_CHECKING, Protocol

import discord

if TYPE_CHECKING:
    from bot.context import VisionContext

MESSAGE_LIMIT = 2000
MAX_MESSAGE_PARTS = 4
EDIT_INTERVAL_S = 1.0
CODE_FENCE = "```"
ESCAPED_CODE_FENCE = "`\u200b``"  # a zero-width space keeps ``` inside a code block from closing it
CODE_BLOCK_OVERHEAD = len(CODE_FENCE + "\n") + len("\n" + CODE_FENCE)
WORKING_TEXT = "Looking at it… \N{LEFT-POINTING MAGNIFYING GLASS}"
EMPTY_ANSWER_TEXT = "(The model gave an empty answer.)"
NO_TEXT_FOUND_TEXT = "(No text found.)"
ANSWER_FILENAME = "answer.txt"
QUEUE_TEXT = "You're #{position} in line; I'll start on it as soon as I can. \N{HOURGLASS WITH FLOWING SAND}"


class Posted(Protocol):
    """A message the bot posted after the main one (``discord.Message`` and ``WebhookMessage`` are)."""

    async def edit(self, *, content: str) -> object: ...

    async def delete(self) -> None: ...


class AnswerTarget(Protocol):
    async def start(self) -> None:
        """Acknowledge the request (defer, or post a 'working…' message)."""

    async def show(self, content: str) -> None:
        """Replace the main answer message's text."""

    async def add(self, content: str) -> Posted:
        """Post one more message after the main one; it can be edited or deleted later."""

    async def add_file(self, content: str, file: discord.File) -> None:
        """Post a message with a file attached."""


class InteractionTarget:
    """The answer to a slash command or context menu: the deferred response plus follow-ups."""

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral

    async def start(self) -> None:
        await self.interaction.response.defer(thinking=True, ephemeral=self.ephemeral)

    async def show(self, content: str) -> None:
        await self.interaction.edit_original_response(content=content)

    async def add(self, content: str) -> Posted:
        return await self.interaction.followup.send(content, ephemeral=self.ephemeral, wait=True)

    async def add_file(self, content: str, file: discord.File) -> None:
        await self.interaction.followup.send(content, file=file, ephemeral=self.ephemeral)


class MessageTarget:
    """The answer to a prefix command: a reply the bot posts, then edits, plus more messages."""

    def __init__(self, ctx: VisionContext) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        self.ctx.progress_message = await self.ctx.reply(WORKING_TEXT, mention_author=False)

    async def show(self, content: str) -> None:
        message = self.ctx.progress_message
        if message is None:
            self.ctx.progress_message = await self.ctx.reply(content, mention_author=False)
        else:
            self.ctx.progress_message = await message.edit(content=content)

    async def add(self, content: str) -> Posted:
        return await self.ctx.send(content)

    async def add_file(self, content: str, file: discord.File) -> None:
        await self.ctx.send(content, file=file)


def escape_code_fences(text: str) -> str:
    return text.replace(CODE_FENCE, ESCAPED_CODE_FENCE)


def split_text(text: str, limit: int) -> list[str]:
    """Split into pieces of at most ``limit`` characters, on line breaks where possible.

    A single line longer than ``limit`` is cut at its last space that fits, or
    hard at ``limit`` when it has none.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if current:
                parts.append(current)
                current = ""
            cut = line.rfind(" ", 0, limit)
            cut = cut + 1 if cut > 0 else limit
            parts.append(line[:cut])
            line = line[cut:]
        if len(current) + len(line) > limit:
            parts.append(current)
            current = line
        else:
            current += line
    if current:
        parts.append(current)
    cleaned = [part.rstrip("\n") for part in parts]
    return [part for part in cleaned if part.strip()]


def format_answer(text: str, *, code_block: bool, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The messages to send for an answer: each under ``limit``, OCR text inside code blocks."""
    if code_block:
        body = escape_code_fences(text.strip("\n"))
        if not body.strip():
            return [NO_TEXT_FOUND_TEXT]
        return [
            f"{CODE_FENCE}\n{part}\n{CODE_FENCE}" for part in split_text(body, limit - CODE_BLOCK_OVERHEAD)
        ]
    body = text.strip()
    if not body:
        return [EMPTY_ANSWER_TEXT]
    return split_text(body, limit)


def _monotonic() -> float:
    return time.monotonic()


class PlaceInLine:
    """Shows a waiting request's place in the queue, at most one edit per ``interval_s``.

    The engine calls it (synchronously) whenever the place changes; 0 means the
    answer has started, which the streamed text then shows.
    """

    def __init__(
        self,
        target: AnswerTarget,
        *,
        interval_s: float = EDIT_INTERVAL_S,
        clock: Callable[[], float] = _monotonic,
    ) -> None:
        self.target = target
        self.interval_s = interval_s
        self.clock = clock
        self.shown: int | None = None
        self._shown_at: float | None = None
        self._edit: asyncio.Task | None = None

    def __call__(self, position: int) -> None:
        if position < 1 or position == self.shown:
            return
        now = self.clock()
        if self._shown_at is not None and now - self._shown_at < self.interval_s:
            return
        self.shown, self._shown_at = position, now
        self._edit = asyncio.get_running_loop().create_task(self._show(self._edit, position))

    async def _show(self, previous: asyncio.Task | None, position: int) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # keep edits in order
        await self.target.show(QUEUE_TEXT.format(position=position))

    async def settle(self) -> None:
        """Wait for the last queue edit, so it can never land on top of the answer."""
        if self._edit is not None:
            await asyncio.gather(self._edit, return_exceptions=True)


class AnswerView:
    """The messages that show one answer: the main one, then continuations.

    Each message is edited only when its text changes: as an answer grows, the message whose
    part grew is edited and a new one is posted when another part begins.
    """

    def __init__(self, target: AnswerTarget) -> None:
        self.target = target
        self.shown: list[str] = [""]  # what each message says; [0] is the main one
        self.added: list[Posted] = []

    async def show(self, parts: list[str]) -> None:
        for index, part in enumerate(parts):
            if index < len(self.shown):
                if part != self.shown[index]:
                    await self._edit(index, part)
            else:
                self.added.append(await self.target.add(part))
                self.shown.append(part)
        await self._remove_from(max(len(parts), 1))

    async def show_file(self, text: str) -> None:
        """The whole answer as a text file, under the main message; continuations go."""
        await self._remove_from(1)
        await self._edit(0, f"The answer is long ({len(text):,} characters), so it is attached as a file.")
        await self.target.add_file(
            "", discord.File(io.BytesIO(text.encode("utf-8")), filename=ANSWER_FILENAME)
        )

    async def _edit(self, index: int, part: str) -> None:
        if index == 0:
            await self.target.show(part)
        else:
            await self.added[index - 1].edit(content=part)
        self.shown[index] = part

    async def _remove_from(self, count: int) -> None:
        while len(self.shown) > count:
            self.shown.pop()
            await self.added.pop().delete()


async def deliver_answer(
    target: AnswerTarget, text: str, *, code_block: bool, view: AnswerView | None = None
) -> None:
    """Show the finished answer: up to four messages, or a text file past that.

    ``view`` holds the messages a live preview already shows; only those that differ are edited.
    """
    view = view or AnswerView(target)
    parts = format_answer(text, code_block=code_block)
    if len(parts) <= MAX_MESSAGE_PARTS:
        await view.show(parts)
    else:
        await view.show_file(text)


async def stream_answer(
    target: AnswerTarget,
    pieces: AsyncIterator[str],
    *,
    code_block: bool,
    interval_s: float = EDIT_INTERVAL_S,
    clock: Callable[[], float] = _monotonic,
    place_in_line: PlaceInLine | None = None,
) -> str:
    """Show text as it arrives (each message edited at most once per ``interval_s``), then the final answer.

    A long answer continues in new messages as it grows (up to four; past that the final answer
    becomes a text file). Returns the whole answer. The piece iterator is always closed, so a
    failed edit also stops the generation behind it.
    """
    text = ""
    view = AnswerView(target)
    last_edit = clock()
    async with aclosing(pieces) if hasattr(pieces, "aclose") else nullcontext(pieces) as stream:
        async for piece in stream:
            text += piece
            now = clock()
            if now - last_edit >= interval_s and text.strip():
                if place_in_line is not None:
                    await place_in_line.settle()
                await view.show(format_answer(text, code_block=code_block)[:MAX_MESSAGE_PARTS])
                last_edit = now
    if place_in_line is not None:
        await place_in_line.settle()
    await deliver_answer(target, text, code_block=code_block, view=view)
    return text
