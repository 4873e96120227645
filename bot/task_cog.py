"""What the describe, OCR and compare cogs share: one task each, and a right-click menu for it.

discord.py cannot declare a context menu inside a cog class, so the cog builds
its menu when constructed, adds it to the tree in ``cog_load`` and removes it in
``cog_unload``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.gather import sources_from_messages
from bot.jobs import answer_interaction
from inference import Task

if TYPE_CHECKING:
    from bot.app import VisionBot


class TaskCog(commands.Cog):
    task: ClassVar[Task]
    menu_name: ClassVar[str]

    def __init__(self, bot: VisionBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name=self.menu_name, callback=self.answer_menu)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def answer_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Right-click on a message: run this cog's task on the images in it."""
        sources = sources_from_messages([message], self.bot.settings.cdn_hosts)
        await answer_interaction(interaction, self.task, sources)
