"""The prefix-command context, which remembers the bot's 'working…' message."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import VisionBot


class VisionContext(commands.Context):
    """A ``commands.Context`` that knows the message the bot is editing as it answers."""

    if TYPE_CHECKING:
        bot: VisionBot

    progress_message: discord.Message | None = None
