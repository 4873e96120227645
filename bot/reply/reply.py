"""Everything a person sees for one job, owned by one :class:`Reply`.

A reply acknowledges the request, shows its place in line, streams the answer across up to four
messages (or a text file past that), and ends in exactly one final state: the answer, a refusal,
a failure, or "stopped". Every Discord call of a job goes through its reply, one at a time and in
order; the final state is written last and never overwritten, and a failed or stopped answer
takes its continuation messages with it. Where the messages go is its surface (surfaces.py); its
edits spend from shared budgets (budget.py); each call goes through calls.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, nullcontext
from typing import Any, cast

import discord

from bot.formatting import EMPTY_ANSWER_TEXT, MESSAGE_LIMIT, format_answer
from bot.i18n import render
from bot.markdown import for_discord, tidy_markdown
from bot.reply.budget import EditBudget, monotonic
from bot.reply.calls import FINAL_ATTEMPTS, ReplyGone, call_discord
from bot.reply.outcomes import RUNNING, Controls, ControlsRenderer, JobRecord, Outcome
from bot.reply.surfaces import HANDED_OVER_TEXT, WORKING_TEXT, Posted, Surface, _with_view
from bot.text import T, Text

log = logging.getLogger(__name__)

MAX_MESSAGE_PARTS = 4
EDIT_INTERVAL_S = 1.0  # one reply previews at most this often


def queue_text(position: int, wait_s: float | None = None) -> Text:
    """A place in line, with the wait in minutes when it is a minute or more (the engine's estimate)."""
    if wait_s is not None and wait_s >= 60:
        return T(
            "You're #{position} in line; I'll start on it in about {minutes} min. "
            "\N{HOURGLASS WITH FLOWING SAND}",
            position=position,
            minutes=round(wait_s / 60),
        )
    return T(
        "You're #{position} in line; I'll start on it as soon as I can. \N{HOURGLASS WITH FLOWING SAND}",
        position=position,
    )


def long_answer_text(length: int) -> Text:
    return T("The answer is long ({length:,} characters), so it is attached as a file.", length=length)


ANSWER_FILENAME = "answer.txt"
MARKDOWN_FILENAME = "answer.md"


class Reply:
    """One job's messages, from the acknowledgement to exactly one final state."""

    def __init__(
        self,
        surface: Surface,
        budgets: list[EditBudget],
        *,
        code_block: bool = False,
        interval_s: float = EDIT_INTERVAL_S,
        clock: Callable[[], float] = monotonic,
        on_closed: Callable[[Reply], None] | None = None,
    ) -> None:
        self.surface = surface
        self.budgets = budgets
        self.code_block = code_block
        self.markdown = False  # the final answer is Markdown: rendered, or a .md file when long
        self.notes: list[str | Text] = []  # small print under the final answer
        # The languages of what the bot itself says (Discord locales; None: English): the server's
        # for what everyone sees, the asker's own for what only they see.
        self.locale: discord.Locale | None = None
        self.private_locale: discord.Locale | None = None
        self.controls: Controls | None = None
        self.render_controls: ControlsRenderer | None = None
        self.interval_s = interval_s
        self.clock = clock
        self.on_closed = on_closed
        self.outcome: Outcome | None = None
        self.delivered = False  # the final state reached Discord
        self.final_parts: list[str] = []  # the texts of the final state's messages
        self.task: str | None = None  # what was asked (describe, ocr, compare), for the owner's figures
        self.started_at = clock()
        self.first_text_at: float | None = None
        self.finished_at: float | None = None
        self.discord_retries = 0
        self.closed = asyncio.Event()
        self.previews_skipped = 0
        self._closing = False
        self._gone = False
        self._answering = False
        self._acknowledged = False
        self._lock = asyncio.Lock()
        self._shown: list[str] = [""]  # what each message says; [0] is the main one
        self._view_shown: object = None  # which buttons the main message has (RUNNING, an outcome)
        self._added: list[Posted] = []
        self._last_preview: float | None = None
        self._position_shown: int | None = None
        self._position_wanted: int | None = None
        self._wait_s: float | None = None
        self._position_task: asyncio.Task | None = None
        # Told (reply, loop time) when a public interaction answer must move to a channel message.
        self.on_handover_due: Callable[[Reply, float], None] | None = None

    @property
    def open(self) -> bool:
        return not self._closing

    @property
    def answering(self) -> bool:
        """The answer has started (its text is streaming, or the engine said it is being answered)."""
        return self._answering

    # -- before the answer ---------------------------------------------------------------------
    async def acknowledge(self) -> None:
        async with self._lock:
            if self._closing:
                return
            if self.surface.acknowledging_spends_an_edit:
                self._spend(1)
            key, view = self._main_view(final=False)
            working = self._render(WORKING_TEXT)
            if not await self._call(
                lambda: self.surface.acknowledge(**_with_view(view), text=working), final=True
            ):
                raise ReplyGone("Discord did not take the acknowledgement")
            self._acknowledged = True
            if view is not discord.utils.MISSING:
                self._view_shown = key
        hand_over_in_s = self.surface.hand_over_in_s()
        if self.on_handover_due is not None and hand_over_in_s is not None:
            self.on_handover_due(self, asyncio.get_running_loop().time() + hand_over_in_s)

    def place_in_line(self, position: int, wait_s: float | None = None) -> None:
        """The engine's callback: ``position`` >= 1 while waiting, 0 once the answer starts; ``wait_s`` the
        engine's estimate of the wait, shown with the next change of place."""
        self._wait_s = wait_s
        if position < 1:
            self._answering = True
            return
        if self._closing or self._gone or self._answering:
            return
        self._position_wanted = position
        if self._position_task is None or self._position_task.done():
            self._position_task = asyncio.get_running_loop().create_task(self._show_place_in_line())

    async def _show_place_in_line(self) -> None:
        while not self._answering and self._position_wanted != self._position_shown:
            position = self._position_wanted
            assert position is not None  # set before this task starts
            try:
                shown = await self._preview([self._render(queue_text(position, self._wait_s))])
            except ReplyGone:
                return
            if not shown:
                return  # too soon or over budget: the next change (or the answer) shows it
            self._position_shown = position

    # -- the answer ----------------------------------------------------------------------------
    async def stream(self, pieces: AsyncIterator[str]) -> str:
        """Show text as it arrives (previews as the budgets allow), then the final answer.

        The piece iterator is always closed, so a reply that can no longer be shown also stops
        the generation behind it. Returns the whole answer.
        """
        text = ""
        async with (
            aclosing(cast(AsyncGenerator[str, None], pieces))
            if hasattr(pieces, "aclose")
            else nullcontext(pieces) as stream
        ):
            async for piece in stream:
                if not piece:
                    continue
                text += piece
                if self.first_text_at is None:
                    self.first_text_at = self.clock()
                if not self._answering or self._last_preview is None:
                    # The first preview waits one interval: a quick answer goes out in one edit.
                    self._answering = True
                    self._last_preview = self.clock()
                if text.strip() and self._preview_due():
                    await self._preview(format_answer(text, code_block=self.code_block)[:MAX_MESSAGE_PARTS])
        await self.answer(text)
        return text

    async def answer(self, text: str) -> None:
        """The final state: the whole answer, in up to four messages or as a file; notes below it."""
        note = "\n".join(f"-# {self._render(line)}" for line in self.notes)
        if self.markdown:
            shown = for_discord(text) or self._render(EMPTY_ANSWER_TEXT)
            if len(shown) + len(note) + 1 <= MESSAGE_LIMIT:
                await self._finish(Outcome.ANSWER, _with_note([shown], note))
                return
            file_text, filename = tidy_markdown(text), MARKDOWN_FILENAME
        else:
            parts = [self._render(part) for part in format_answer(text, code_block=self.code_block)]
            parts = _with_note(parts, note)
            if len(parts) <= MAX_MESSAGE_PARTS:
                await self._finish(Outcome.ANSWER, parts)
                return
            file_text, filename = text, ANSWER_FILENAME
        summary = self._render(long_answer_text(len(text))) + (f"\n{note}" if note else "")
        await self._finish(Outcome.ANSWER, [summary], file_text=file_text, filename=filename)

    async def message_ids(self) -> list[int]:
        """The ids of the messages showing this reply, the main one first (none if nothing shows)."""
        main = await self.surface.main_message_id()
        if main is None:
            return []
        return [main, *(posted.id for posted in self._added if isinstance(getattr(posted, "id", None), int))]

    async def finish(self, outcome: Outcome, text: str | Text, *, private: bool = True) -> None:
        """A final state other than the answer; its continuation messages are removed.

        ``private``: when nothing was shown yet, only the person sees it (where Discord allows).
        """
        await self._finish(outcome, [self._render(text, private=private)], private=private)

    @property
    def unseen(self) -> bool:
        """Nothing was shown yet, and nothing ended it."""
        return not (self._closing or self._acknowledged or any(self._shown))

    def end_unseen(self, outcome: Outcome) -> None:
        """End in ``outcome`` without a word, where nothing was shown yet (:attr:`unseen`): a refusal this
        person was told moments ago."""
        assert self.unseen, "a reply that shows something ends with a final state people see"
        self._closing = True
        self.outcome = outcome
        self.finished_at = self.clock()
        self.closed.set()
        if self.on_closed is not None:
            self.on_closed(self)

    def record(self) -> JobRecord:
        return JobRecord(
            task=self.task,
            outcome=self.outcome,
            started_at=self.started_at,
            first_text_at=self.first_text_at,
            finished_at=self.finished_at,
            discord_retries=self.discord_retries,
            previews_skipped=self.previews_skipped,
        )

    def _render(self, text: str | Text, *, private: bool = False) -> str:
        """A text for people in the reader's language: the asker's own where only they will see it,
        the server's where everyone does. (The model's answer is never passed through here.)"""
        return render(text, self.private_locale if self.surface.shown_privately(private) else self.locale)

    # -- internals -----------------------------------------------------------------------------
    def _preview_due(self) -> bool:
        return self._last_preview is None or self.clock() - self._last_preview >= self.interval_s

    def _spend(self, calls: int) -> None:
        for budget in self.budgets:
            budget.spend(calls)

    async def _preview(self, parts: list[str]) -> bool:
        """Show an intermediate state if this reply's interval and the budgets allow; else skip it."""
        if self._closing or self._gone or not self._preview_due():
            return False
        async with self._lock:
            if self._closing or self._gone:
                return False
            calls = self._calls_needed(parts)
            if calls == 0:
                return True
            if any(budget.available() < calls for budget in self.budgets):
                self.previews_skipped += 1
                return False
            self._spend(calls)
            self._last_preview = self.clock()
            return await self._show_parts(parts, final=False)

    def _calls_needed(self, parts: list[str]) -> int:
        shown = self._shown
        changed = sum(1 for index, part in enumerate(parts) if index >= len(shown) or part != shown[index])
        return changed + max(len(self._shown) - max(len(parts), 1), 0)

    async def _finish(
        self,
        outcome: Outcome,
        parts: list[str],
        *,
        file_text: str | None = None,
        filename: str = ANSWER_FILENAME,
        private: bool = True,
    ) -> None:
        if self._closing:
            return  # the final state is written once
        self._closing = True
        if self._position_task is not None:
            await asyncio.gather(self._position_task, return_exceptions=True)
        try:
            async with self._lock:
                self.outcome = outcome
                self.final_parts = list(parts)
                if self._gone or (outcome is not Outcome.ANSWER and self.surface.shows_only_answers):
                    await self._remove_what_is_left()
                    return
                if self._handover_due():
                    await self._hand_over()
                if file_text is not None:
                    await self._remove_from(1, final=True)
                    await self._show_parts(parts, final=True)
                    self._spend(1)
                    file = discord.File(io.BytesIO(file_text.encode("utf-8")), filename=filename)
                    await self._call(lambda: self.surface.add_file("", file), final=True)
                else:
                    self.delivered = await self._show_parts(parts, final=True, private=private)
                    return
                self.delivered = True
        except ReplyGone as gone:
            log.info("A reply could not be finished (%s); its output ends here", gone)
        finally:
            self.finished_at = self.clock()
            self.closed.set()
            if self.on_closed is not None:
                self.on_closed(self)

    async def _remove_what_is_left(self) -> None:
        """Best effort, for a reply that cannot be edited any more: delete the messages it shows.

        Deleting its own messages needs no permission, so a half answer goes even when the bot may no
        longer edit; a message someone already deleted is simply not there.
        """
        if not (self._acknowledged or any(self._shown)):
            return
        with contextlib.suppress(ReplyGone):
            await self._remove_from(1, final=True)
        with contextlib.suppress(ReplyGone):
            await self._call(self.surface.delete_main, final=True, deleting=True)

    async def _show_parts(self, parts: list[str], *, final: bool, private: bool = True) -> bool:
        """Make the messages say ``parts``: edit those that differ, post new ones, remove extra ones.

        True if every part is showing; a preview call that failed for now leaves its message as it was.
        """
        shown_all = True
        for index, part in enumerate(parts):
            unchanged = index < len(self._shown) and part == self._shown[index]
            if unchanged and (index > 0 or self._main_view(final=final)[1] is discord.utils.MISSING):
                continue
            if final:
                self._spend(1)
            if index < len(self._shown):
                shown_all &= await self._set_part(index, part, final=final, private=private)
            elif not await self._add_part(part, final=final):
                shown_all = False
                break
        await self._remove_from(max(len(parts), 1), final=final)
        return shown_all

    def _main_view(self, *, final: bool) -> tuple[object, Any]:
        """Which buttons the main message should have now, and the view to send (MISSING: no change)."""
        if self.controls is None or self.render_controls is None:
            return self._view_shown, discord.utils.MISSING
        key = self.outcome if final else RUNNING
        if key == self._view_shown:
            return key, discord.utils.MISSING
        return key, self.render_controls(self.controls, self.outcome if final else None)

    async def _set_part(self, index: int, part: str, *, final: bool, private: bool) -> bool:
        if index == 0:
            key, view = self._main_view(final=final)
            show = self.surface.show
            done = await self._call(lambda: show(part, private=private, **_with_view(view)), final=final)
            if done:
                self._view_shown = key
        else:
            done = await self._call(lambda: self._added[index - 1].edit(content=part), final=final)
        if done:
            self._shown[index] = part
        return done

    async def _add_part(self, part: str, *, final: bool) -> bool:
        posted: list[Posted] = []

        async def add() -> None:
            posted.append(await self.surface.add(part))

        if not await self._call(add, final=final):
            return False
        self._added.append(posted[0])
        self._shown.append(part)
        return True

    async def _remove_from(self, count: int, *, final: bool) -> None:
        while len(self._shown) > count:
            message = self._added.pop()
            self._shown.pop()
            if final:
                self._spend(1)
            with contextlib.suppress(ReplyGone):  # already deleted by someone: nothing to remove
                await self._call(message.delete, final=final, deleting=True)

    def _count_retry(self) -> None:
        self.discord_retries += 1

    async def _call(
        self, call: Callable[[], Awaitable[object]], *, final: bool, deleting: bool = False
    ) -> bool:
        try:
            return await call_discord(
                call, attempts=FINAL_ATTEMPTS if final else 1, on_retry=self._count_retry
            )
        except ReplyGone:
            if not deleting:
                self._gone = True
            raise

    # -- the interaction token's end -------------------------------------------------------------
    def _handover_due(self) -> bool:
        left = self.surface.hand_over_in_s()
        return left is not None and left <= 0

    async def hand_over_if_due(self) -> None:
        """Move a public interaction answer to a channel message if its token is about to expire."""
        async with self._lock:
            if self._closing or self._gone or not self._handover_due():
                return
            shown = list(self._shown)
            try:
                await self._hand_over()
                if any(shown):
                    await self._show_parts(shown, final=True)
            except ReplyGone:
                log.info("A reply could not move to a channel message")

    async def _hand_over(self) -> None:
        """Before the token expires: continuations go, the response points below, a new message takes over."""
        await self._remove_from(1, final=True)
        self._spend(1)
        handed_over = self._render(HANDED_OVER_TEXT)
        await self._call(lambda: self.surface.hand_over(handed_over), final=True)
        self._shown = [""]
        log.info("An answer outlived its interaction token and continues as a channel message")


def _with_note(parts: list[str], note: str) -> list[str]:
    """The note under the last part, or as a part of its own when it does not fit there."""
    if not note:
        return parts
    if len(parts[-1]) + len(note) + 1 <= MESSAGE_LIMIT:
        return [*parts[:-1], f"{parts[-1]}\n{note}"]
    return [*parts, note]
