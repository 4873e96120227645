"""What the describe, OCR and compare cogs share: one task each, and a right-click menu for it.

discord.py cannot declare a context menu inside a cog class, so the cog builds
its menu when constructed, adds it to the tree in ``cog_load`` and removes it in
``cog_unload``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.gather import sources_from_messages
from bot.jobs import answer_interaction
from inference import Task

if TYPE_CHECKING:
    from bot.services import Services

T = TypeVar("T")


# Where the task commands work: in servers that added the bot, and (installed by a person to their
# account) in any server, their DMs and group DMs, where the bot answers privately.
INSTALLS = app_commands.AppInstallationType(guild=True, user=True)
CONTEXTS = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)


def everywhere(command: T) -> T:
    """Let a slash command be used from a person's own install of the app, too."""
    command = app_commands.allowed_installs(guilds=True, users=True)(command)
    return app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)(command)


def menu(name: str, callback) -> app_commands.ContextMenu:
    """A right-click (Apps) entry on messages, usable wherever the task commands are."""
    return app_commands.ContextMenu(
        name=name, callback=callback, allowed_installs=INSTALLS, allowed_contexts=CONTEXTS
    )


class TaskCog(commands.Cog):
    task: ClassVar[Task]
    menu_name: ClassVar[str]

    def __init__(self, bot: Services) -> None:
        self.bot = bot
        self.menu = menu(self.menu_name, self.answer_menu)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def answer_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Right-click on a message: run this cog's task on the images in it."""
        sources = sources_from_messages([message], self.bot.settings.cdn_hosts)
        await answer_interaction(interaction, self.task, sources)
