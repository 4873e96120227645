"""Everything a person sees for one job, owned by one :class:`Reply`.

A reply acknowledges the request, shows its place in line, streams the answer across up to four
messages (or a text file past that), and ends in exactly one final state: the answer, a refusal,
a failure, or "stopped". Every Discord call of a job goes through its reply, one at a time and in
order; the final state is written last and never overwritten, and a failed or stopped answer
takes its continuation messages with it.

Where the messages go is a surface: :class:`MessageSurface` (a prefix command: a reply the bot
posts, then edits) or :class:`InteractionSurface` (a slash command or menu: the deferred
response plus follow-ups; a public one moves to an ordinary channel message before Discord's
15-minute interaction token runs out).

Edits share an :class:`EditBudget` per channel (and per interaction): a live preview is skipped,
never queued, when the budget is spent; acknowledgements and final states always go out. A 429
or 5xx is retried for those after the delay Discord gives; a message that was deleted or a
permission that was removed ends the job's output quietly (:class:`ReplyGone`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import heapq
import io
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable
from contextlib import aclosing, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import discord

from bot.formatting import EMPTY_ANSWER_TEXT, MESSAGE_LIMIT, format_answer
from bot.i18n import render
from bot.markdown import for_discord, tidy_markdown
from bot.text import N_, T, Text

if TYPE_CHECKING:
    from bot.context import VisionContext

log = logging.getLogger(__name__)

MAX_MESSAGE_PARTS = 4
EDIT_INTERVAL_S = 1.0  # one reply previews at most this often
WORKING_TEXT = N_("Looking at it… \N{LEFT-POINTING MAGNIFYING GLASS}")
HANDED_OVER_TEXT = N_(
    "This took a while, so the answer continues in a new message below. \N{DOWNWARDS ARROW}"
)


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

# Discord lets an interaction's response be edited for 15 minutes; a public answer moves to an
# ordinary channel message this long before that, so the move itself is still allowed.
INTERACTION_TOKEN_S = 15 * 60
HANDOVER_MARGIN_S = 60.0

# Discord's per-channel limit on message sends and edits is about five per five seconds.
CHANNEL_EDITS_PER_S = 1.0
CHANNEL_EDIT_BURST = 5
INTERACTION_EDITS_PER_S = 1.0
INTERACTION_EDIT_BURST = 5

FINAL_ATTEMPTS = 4  # a final state, an acknowledgement: tried this often on 429 and 5xx
MAX_RETRY_DELAY_S = 30.0


class Outcome(enum.StrEnum):
    ANSWER = "answer"
    REFUSAL = "refusal"
    FAILURE = "failure"
    STOPPED = "stopped"


class ReplyGone(Exception):
    """The reply can no longer be shown (its message was deleted, a permission was removed)."""


def _monotonic() -> float:
    return time.monotonic()  # looked up at call time, so a simulated clock is honoured


# ---------------------------------------------------------------- the edit budget


@dataclass
class EditBudget:
    """A token bucket: ``burst`` calls at once, refilled at ``per_s``; finals may run it into debt.

    Previews need a token each and are skipped without one; acknowledgements and final states
    always go out and may take it below zero, so previews pause until the budget recovers.
    """

    per_s: float
    burst: int
    clock: Callable[[], float] = _monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.per_s)
        self.updated = now

    def available(self) -> float:
        self._refill()
        return self.tokens

    def spend(self, calls: int = 1) -> None:
        """Count calls made. The debt stops at one burst: Discord itself makes calls past that wait."""
        self._refill()
        self.tokens = max(self.tokens - calls, -float(self.burst))


class EditBudgets:
    """One budget per channel and per interaction, shared by every reply there."""

    def __init__(self, clock: Callable[[], float] = _monotonic) -> None:
        self.clock = clock
        self._budgets: dict[Hashable, EditBudget] = {}

    def get(self, key: Hashable) -> EditBudget:
        budget = self._budgets.get(key)
        if budget is None:
            if len(self._budgets) > 10_000:  # forget full (idle) budgets now and then
                self._budgets = {k: b for k, b in self._budgets.items() if b.available() < b.burst}
            kind = key[0] if isinstance(key, tuple) else "channel"
            per_s, burst = (
                (INTERACTION_EDITS_PER_S, INTERACTION_EDIT_BURST)
                if kind == "interaction"
                else (CHANNEL_EDITS_PER_S, CHANNEL_EDIT_BURST)
            )
            budget = self._budgets[key] = EditBudget(per_s, burst, self.clock)
        return budget


# ---------------------------------------------------------------- surfaces


class Posted(Protocol):
    """A continuation message (``discord.Message`` and ``WebhookMessage`` are)."""

    id: int

    async def edit(self, *, content: str) -> object: ...

    async def delete(self) -> None: ...


class Surface(Protocol):
    budget_keys: tuple[Hashable, ...]

    async def acknowledge(self, view: Any = discord.utils.MISSING, text: str = WORKING_TEXT) -> None:
        """Tell Discord and the person that the bot is on it (with ``view``'s buttons, where it can)."""

    async def show(self, content: str, *, private: bool, view: Any = discord.utils.MISSING) -> None:
        """Set the main message's text (``private`` only matters when nothing was shown yet).

        ``view``: the buttons under it (None removes them; MISSING leaves them as they are).
        """

    async def add(self, content: str) -> Posted:
        """Post a continuation message."""

    async def add_file(self, content: str, file: discord.File) -> None:
        """Post a message with a file attached."""

    async def delete_main(self) -> None:
        """Remove the main message (a reply that cannot be finished leaves no half answer)."""

    async def main_message_id(self) -> int | None:
        """The id of the message showing the answer (None: nothing is showing)."""


def _with_view(view: Any) -> dict[str, Any]:
    """``view=`` for an edit, left out when there is nothing to change (None removes the buttons)."""
    return {} if view is discord.utils.MISSING else {"view": view}


def _new_view(view: Any) -> dict[str, Any]:
    """``view=`` for a new message, left out when it has no buttons."""
    return {} if view is discord.utils.MISSING or view is None else {"view": view}


class MessageSurface:
    """A prefix command's answer: a reply to the command message, then edits of it."""

    def __init__(self, ctx: VisionContext) -> None:
        self.ctx = ctx
        self.main: discord.Message | None = None
        self.budget_keys: tuple[Hashable, ...] = (("channel", ctx.channel.id),)

    def _reference(self) -> discord.MessageReference:
        # If the command message is gone by now, post without the reply arrow instead of failing.
        return self.ctx.message.to_reference(fail_if_not_exists=False)

    async def acknowledge(self, view: Any = discord.utils.MISSING, text: str = WORKING_TEXT) -> None:
        self.main = await self.ctx.send(
            text, reference=self._reference(), mention_author=False, **_new_view(view)
        )

    async def show(self, content: str, *, private: bool, view: Any = discord.utils.MISSING) -> None:
        if self.main is None:
            self.main = await self.ctx.send(
                content, reference=self._reference(), mention_author=False, **_new_view(view)
            )
        else:
            self.main = await self.main.edit(content=content, **_with_view(view))

    async def add(self, content: str) -> Posted:
        return await self.ctx.send(content)

    async def add_file(self, content: str, file: discord.File) -> None:
        await self.ctx.send(content, file=file)

    async def delete_main(self) -> None:
        if self.main is not None:
            await self.main.delete()

    async def main_message_id(self) -> int | None:
        return self.main.id if self.main is not None else None


class InteractionSurface:
    """A slash command's or menu's answer: the deferred response, then follow-ups.

    A public answer still running when the interaction token is about to expire moves to an
    ordinary channel message (:meth:`hand_over`); a private one cannot, so jobs bound its time.
    """

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.channel_message: discord.Message | None = None
        self.response_message_id: int | None = None
        self.handed_over = False
        keys: list[Hashable] = [("interaction", interaction.id)]
        if not ephemeral:
            keys.append(("channel", interaction.channel_id))
        self.budget_keys = tuple(keys)

    @property
    def expires_at(self) -> datetime.datetime:
        return self.interaction.created_at + datetime.timedelta(seconds=INTERACTION_TOKEN_S)

    def seconds_left(self) -> float:
        """Seconds until the response can no longer be edited, less the hand-over margin."""
        left = (self.expires_at - discord.utils.utcnow()).total_seconds()
        return left - HANDOVER_MARGIN_S

    def can_hand_over(self) -> bool:
        return not self.ephemeral and not self.handed_over and self.interaction.response.is_done()

    async def hand_over(self, text: str = HANDED_OVER_TEXT) -> None:
        """Say the answer continues below; from now on the answer is an ordinary channel message."""
        await self.interaction.edit_original_response(content=text)
        self.handed_over = True

    async def acknowledge(self, view: Any = discord.utils.MISSING, text: str = WORKING_TEXT) -> None:
        if view is discord.utils.MISSING or view is None:
            await self.interaction.response.defer(thinking=True, ephemeral=self.ephemeral)
        else:  # a deferral cannot carry buttons: the same one call, as a message with them
            await self.interaction.response.send_message(text, ephemeral=self.ephemeral, view=view)

    async def show(self, content: str, *, private: bool, view: Any = discord.utils.MISSING) -> None:
        if not self.interaction.response.is_done():
            await self.interaction.response.send_message(
                content, ephemeral=private or self.ephemeral, **_new_view(view)
            )
        elif not self.handed_over:
            shown = await self.interaction.edit_original_response(content=content, **_with_view(view))
            self.response_message_id = getattr(shown, "id", None)
        elif self.channel_message is None:
            self.channel_message = await self._channel().send(content, **_new_view(view))
        else:
            self.channel_message = await self.channel_message.edit(content=content, **_with_view(view))

    async def add(self, content: str) -> Posted:
        if self.handed_over:
            return await self._channel().send(content)
        return await self.interaction.followup.send(content, ephemeral=self.ephemeral, wait=True)

    async def add_file(self, content: str, file: discord.File) -> None:
        if self.handed_over:
            await self._channel().send(content, file=file)
        else:
            await self.interaction.followup.send(content, file=file, ephemeral=self.ephemeral)

    async def delete_main(self) -> None:
        if self.channel_message is not None:
            await self.channel_message.delete()
        elif self.interaction.response.is_done() and not self.handed_over:
            await self.interaction.delete_original_response()

    async def main_message_id(self) -> int | None:
        if self.channel_message is not None:
            return self.channel_message.id
        if self.handed_over:
            return None
        if self.response_message_id is not None:
            return self.response_message_id
        try:
            return (await self.interaction.original_response()).id  # one call, for answers only
        except discord.HTTPException:
            return None

    def _channel(self) -> discord.abc.Messageable:
        channel = self.interaction.channel
        if channel is None:  # pragma: no cover - Discord always sends the channel for commands
            raise ReplyGone("the interaction has no channel")
        return channel  # type: ignore[return-value]


# ---------------------------------------------------------------- calling Discord


def _is_permanent(error: discord.HTTPException) -> bool:
    # Deleted message or webhook, expired token, permission removed, bad request: trying again
    # cannot help.
    return error.status is not None and 400 <= error.status < 500 and error.status != 429


def _retry_delay(error: BaseException, attempt: int) -> float:
    """The wait Discord asked for (``retry_after`` or ``Retry-After``), else a short back-off."""
    delay = getattr(error, "retry_after", None)
    if delay is None:
        headers = getattr(getattr(error, "response", None), "headers", None) or {}
        with contextlib.suppress(TypeError, ValueError):
            delay = float(headers.get("Retry-After", ""))
    if delay is None:
        delay = 0.5 * 2**attempt
    return min(max(float(delay), 0.0), MAX_RETRY_DELAY_S)


async def call_discord(
    call: Callable[[], Awaitable[object]], *, attempts: int, on_retry: Callable[[], None] | None = None
) -> bool:
    """Make one Discord call; True if it went through, False if it was given up as transient.

    429 and 5xx are retried (up to ``attempts`` tries in all) after the delay Discord gives
    (``on_retry`` is told of each retry). A permanent failure raises :class:`ReplyGone`.
    """
    for attempt in range(attempts):
        try:
            await call()
            return True
        except discord.RateLimited as error:
            failure: BaseException = error
        except discord.HTTPException as error:
            if _is_permanent(error):
                raise ReplyGone(f"{error.status} {error.text or ''}".strip()) from error
            failure = error
        if attempt + 1 < attempts:
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(_retry_delay(failure, attempt))
    log.info("Gave up a Discord call after %d tries: %s", attempts, failure)
    return False


# ---------------------------------------------------------------- the reply


@dataclass(frozen=True)
class Controls:
    """What the buttons under an answer need: the job (to stop it), who asked, who can see it, and
    the language of their labels."""

    job_id: int
    asker_id: int
    private: bool
    locale: discord.Locale | None = None


# The buttons for a running answer (outcome None) or a finished one; None for no buttons.
ControlsRenderer = Callable[[Controls, "Outcome | None"], Any]
RUNNING = "running"


class Reply:
    """One job's messages, from the acknowledgement to exactly one final state."""

    def __init__(
        self,
        surface: Surface,
        budgets: list[EditBudget],
        *,
        code_block: bool = False,
        interval_s: float = EDIT_INTERVAL_S,
        clock: Callable[[], float] = _monotonic,
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
            if not isinstance(self.surface, InteractionSurface):  # a deferral is no channel message
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
        surface = self.surface
        if (
            self.on_handover_due is not None
            and isinstance(surface, InteractionSurface)
            and surface.can_hand_over()
        ):
            self.on_handover_due(self, asyncio.get_running_loop().time() + surface.seconds_left())

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

    def _render(self, text: str | Text, *, private: bool = False) -> str:
        """A text for people in the reader's language: the asker's own where only they will see it,
        the server's where everyone does. (The model's answer is never passed through here.)"""
        surface = self.surface
        shown_privately = isinstance(surface, InteractionSurface) and (
            surface.ephemeral or (private and not surface.interaction.response.is_done())
        )
        return render(text, self.private_locale if shown_privately else self.locale)

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
                if self._gone:
                    await self._remove_what_is_left()
                    return
                if isinstance(self.surface, InteractionSurface) and self._handover_due():
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
        surface = self.surface
        if not isinstance(surface, InteractionSurface):
            return False
        return surface.can_hand_over() and surface.seconds_left() <= 0

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
        surface = self.surface
        assert isinstance(surface, InteractionSurface)
        await self._remove_from(1, final=True)
        self._spend(1)
        handed_over = self._render(HANDED_OVER_TEXT)
        await self._call(lambda: surface.hand_over(handed_over), final=True)
        self._shown = [""]
        log.info("An answer outlived its interaction token and continues as a channel message")


def _with_note(parts: list[str], note: str) -> list[str]:
    """The note under the last part, or as a part of its own when it does not fit there."""
    if not note:
        return parts
    if len(parts[-1]) + len(note) + 1 <= MESSAGE_LIMIT:
        return [*parts[:-1], f"{parts[-1]}\n{note}"]
    return [*parts, note]


# ---------------------------------------------------------------- all replies of the bot


REPLY_KEY = "vision_reply"


class Replies:
    """Makes each job's :class:`Reply` (one per interaction or command), with shared edit budgets.

    Keeps the open ones, so shutdown can wait for their final states.
    """

    def __init__(self, clock: Callable[[], float] = _monotonic) -> None:
        self.clock = clock
        self.budgets = EditBudgets(clock)
        self.open: set[Reply] = set()
        self.on_closed: Callable[[Reply], None] | None = None  # told of every reply's end (metrics)
        self.render_controls: ControlsRenderer | None = None  # the buttons under answers, if any
        # One timer for all hand-overs (the soonest), rather than one per reply.
        self._handovers: list[tuple[float, int, Reply]] = []
        self._handover_timer: asyncio.TimerHandle | None = None
        self._handover_ids = itertools.count()

    def _make(self, surface: Surface, *, code_block: bool) -> Reply:
        reply = Reply(
            surface,
            [self.budgets.get(key) for key in surface.budget_keys],
            code_block=code_block,
            clock=self.clock,
            on_closed=self._closed,
        )
        reply.on_handover_due = self._watch_handover
        reply.render_controls = self.render_controls
        self.open.add(reply)
        return reply

    def _closed(self, reply: Reply) -> None:
        self.open.discard(reply)
        if self.on_closed is not None:
            self.on_closed(reply)

    def _watch_handover(self, reply: Reply, when: float) -> None:
        heapq.heappush(self._handovers, (when, next(self._handover_ids), reply))
        self._arm_handover_timer()

    def _arm_handover_timer(self) -> None:
        while self._handovers and not self._handovers[0][2].open:
            heapq.heappop(self._handovers)  # finished long ago
        if self._handover_timer is not None:
            self._handover_timer.cancel()
            self._handover_timer = None
        if self._handovers:
            loop = asyncio.get_running_loop()
            self._handover_timer = loop.call_at(self._handovers[0][0], self._handovers_due)

    def _handovers_due(self) -> None:
        self._handover_timer = None
        loop = asyncio.get_running_loop()
        while self._handovers and self._handovers[0][0] <= loop.time():
            _, _, reply = heapq.heappop(self._handovers)
            if reply.open:
                loop.create_task(reply.hand_over_if_due())
        self._arm_handover_timer()

    def for_interaction(
        self, interaction: discord.Interaction, *, ephemeral: bool = False, code_block: bool = False
    ) -> Reply:
        reply = interaction.extras.get(REPLY_KEY)
        if reply is None:
            reply = interaction.extras[REPLY_KEY] = self._make(
                InteractionSurface(interaction, ephemeral=ephemeral), code_block=code_block
            )
            reply.private_locale = interaction.locale
            reply.locale = interaction.guild_locale if interaction.guild_id else interaction.locale
        return reply

    def for_context(self, ctx: VisionContext, *, code_block: bool = False) -> Reply:
        if ctx.reply_state is None:
            ctx.reply_state = reply = self._make(MessageSurface(ctx), code_block=code_block)
            reply.locale = reply.private_locale = ctx.guild.preferred_locale if ctx.guild else None
        return ctx.reply_state

    async def close_all(self, text: str | Text, *, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for open replies to end; end those still open as stopped."""
        waiting = [asyncio.ensure_future(reply.closed.wait()) for reply in self.open]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=timeout_s)
            for future in pending:
                future.cancel()
        left = list(self.open)
        if left:
            log.info("Ending %d open answers as stopped", len(left))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.gather(*(reply.finish(Outcome.STOPPED, text) for reply in left))
