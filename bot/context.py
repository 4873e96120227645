"""The prefix-command context, which carries the job's :class:`bot.reply.Reply`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import VisionBot
    from bot.reply import Reply


class VisionContext(commands.Context):
    """A ``commands.Context`` that knows the reply showing this command's answer (once there is one)."""

    if TYPE_CHECKING:
        bot: VisionBot

    reply_state: Reply | None = None
