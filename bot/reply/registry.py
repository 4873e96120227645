"""All the bot's open replies: one :class:`~bot.reply.reply.Reply` per interaction, command or alt text,
with the edit budgets they share and one timer for the hand-overs of interaction answers before their tokens
expire."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.reply.budget import EditBudgets, monotonic
from bot.reply.outcomes import ControlsRenderer, JobRecord, Outcome
from bot.reply.reply import Reply
from bot.reply.surfaces import InteractionSurface, MessageSurface, Surface, UnaskedSurface
from bot.text import Text

if TYPE_CHECKING:
    from discord.ext import commands

log = logging.getLogger(__name__)

REPLY_KEY = "vision_reply"


class Replies:
    """Makes each job's :class:`Reply` (one per interaction, command or alt text), with shared edit budgets.

    Keeps the open ones, so shutdown can wait for their final states.
    """

    def __init__(self, clock: Callable[[], float] = monotonic) -> None:
        self.clock = clock
        self.budgets = EditBudgets(clock)
        self.open: set[Reply] = set()
        self.on_closed: Callable[[JobRecord], None] | None = None  # told of every job's end (metrics)
        self.render_controls: ControlsRenderer | None = None  # the buttons under answers, if any
        # One timer for all hand-overs (the soonest), rather than one per reply.
        self._handovers: list[tuple[float, int, Reply]] = []
        self._handover_timer: asyncio.TimerHandle | None = None
        self._handover_ids = itertools.count()
        # A prefix command's reply, by its context (an interaction keeps its own in ``extras``).
        self._by_context: weakref.WeakKeyDictionary[commands.Context, Reply] = weakref.WeakKeyDictionary()

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
            self.on_closed(reply.record())

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

    def for_context(self, ctx: commands.Context, *, code_block: bool = False) -> Reply:
        """The reply of a prefix command: one for as long as its context lives (the command, then any error
        it raised, end the same reply)."""
        reply = self._by_context.get(ctx)
        if reply is None:
            reply = self._by_context[ctx] = self._make(MessageSurface(ctx), code_block=code_block)
            reply.locale = reply.private_locale = ctx.guild.preferred_locale if ctx.guild else None
        return reply

    def for_unasked(self, message: discord.Message, *, view: Any = discord.utils.MISSING) -> Reply:
        """A reply nobody asked for, under ``message`` (automatic alt text), in the server's language."""
        reply = self._make(UnaskedSurface(message, view), code_block=False)
        reply.locale = reply.private_locale = message.guild.preferred_locale if message.guild else None
        return reply

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
