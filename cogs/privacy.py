"""What the bot keeps about people, and how it forgets: ``/privacy show`` and ``/privacy forget`` for each
member, deleted messages forgotten, and old conversations removed at start-up and every hour.

Kept (in the bot's database, ``DATABASE_PATH``): the conversations a person started, for follow-up
questions (their questions, the answers, where the pictures are on Discord), for ``KEPT_DAYS`` days; a
person's alt-text opt-out, until they opt back in; the latest changes of each server's settings, with the
admin who made them. Deleting the message that asked, an answer, or a picture (one by one or in bulk)
forgets every conversation it belongs to.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot.conversation import KEPT_DAYS
from bot.i18n import render
from bot.server_settings import KEPT_CHANGES
from bot.task_cog import CONTEXTS, INSTALLS
from bot.text import T, Text

if TYPE_CHECKING:
    from bot.app import VisionBot

log = logging.getLogger(__name__)

PRUNE_EVERY_HOURS = 1


def kept_about(
    conversations: int, oldest: float | None, opted_out: bool, settings_changes: int
) -> list[Text]:
    """What the bot keeps about one person, in lines for them."""
    lines = [T("**What I keep about you**")]
    if conversations:
        date = discord.utils.format_dt(datetime.datetime.fromtimestamp(oldest or 0, datetime.UTC), "D")
        lines.append(
            T(
                "- {count} conversation(s) you started, so you can ask follow-up questions: your questions, "
                "my answers and where the pictures are on Discord. The oldest is from {date}; each is kept "
                "{days} days.",
                count=conversations,
                date=date,
                days=KEPT_DAYS,
            )
        )
    else:
        lines.append(
            T(
                "- No conversation of yours (each is kept {days} days, for follow-up questions).",
                days=KEPT_DAYS,
            )
        )
    if opted_out:
        lines.append(
            T("- That you opted out of automatic alt text (until you opt back in: `/alttext optin`).")
        )
    if settings_changes:
        lines.append(
            T(
                "- {count} change(s) you made to a server's settings, in that server's log (its latest "
                "{kept} changes are kept, with who made them).",
                count=settings_changes,
                kept=KEPT_CHANGES,
            )
        )
    lines.append(
        T(
            "`/privacy forget` erases your conversations now. Deleting a question, an answer or a picture "
            "also forgets its conversation."
        )
    )
    return lines


def forgotten_text(count: int) -> Text:
    return T("Done: I forgot {count} conversation(s) you started.", count=count)


class Privacy(commands.Cog):
    privacy = app_commands.Group(
        name="privacy",
        description="What the bot keeps about you, and erasing it",
        allowed_installs=INSTALLS,
        allowed_contexts=CONTEXTS,
    )

    def __init__(self, bot: VisionBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.prune.start()  # its first round runs at once: at start-up

    async def cog_unload(self) -> None:
        self.prune.cancel()

    @tasks.loop(hours=PRUNE_EVERY_HOURS)
    async def prune(self) -> None:
        try:
            forgotten = await self.bot.conversations.prune()
        except sqlite3.Error:
            log.exception("Could not remove old conversations; trying again in an hour")
            return
        if forgotten:
            log.info("Removed %d conversation(s) older than %d days", forgotten, KEPT_DAYS)

    @privacy.command(name="show", description="What the bot keeps about you")
    async def show(self, interaction: discord.Interaction) -> None:
        user_id = interaction.user.id
        count, oldest = await self.bot.conversations.started_by(user_id)
        lines = kept_about(
            count,
            oldest,
            await self.bot.alt_text_opt_outs.contains(user_id),
            await self.bot.server_settings.changes_by(user_id),
        )
        text = "\n".join(render(line, interaction.locale) for line in lines)
        await interaction.response.send_message(text, ephemeral=True)

    @privacy.command(name="forget", description="Erase the conversations you started")
    async def forget(self, interaction: discord.Interaction) -> None:
        count = await self.bot.conversations.forget_asker(interaction.user.id)
        log.info("A member erased %d conversation(s) of theirs", count)
        await interaction.response.send_message(
            render(forgotten_text(count), interaction.locale), ephemeral=True
        )

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._forget([payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._forget(payload.message_ids)

    async def _forget(self, message_ids) -> None:
        try:
            forgotten = await self.bot.conversations.forget_messages(message_ids)
        except sqlite3.Error:
            log.exception("Could not forget the conversations of deleted messages")
            return
        if forgotten:
            log.info("Forgot %d conversation(s) whose message was deleted", forgotten)


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Privacy(bot))
