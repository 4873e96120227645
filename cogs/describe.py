"""Describe an image, optionally answering a question about it."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import VisionBot
from bot.context import VisionContext
from bot.gather import source_from_attachment, sources_from_messages
from bot.jobs import MAX_QUESTION_CHARS, answer_command, answer_interaction
from inference import Task

MENU_NAME = "Describe image"


class Describe(commands.Cog):
    def __init__(self, bot: VisionBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name=MENU_NAME, callback=self.describe_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(name="describe", description="Describe an image, or answer a question about it.")
    @app_commands.describe(image="The image to look at", question="What you want to know (optional)")
    async def describe_slash(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        question: app_commands.Range[str, 1, MAX_QUESTION_CHARS] | None = None,
    ) -> None:
        await answer_interaction(
            interaction, Task.DESCRIBE, [source_from_attachment(image)], question=question
        )

    @commands.command(name="describe")
    async def describe_prefix(self, ctx: VisionContext, *, question: str | None = None) -> None:
        """Describe the image attached to your message (or to the message you reply to)."""
        await answer_command(ctx, Task.DESCRIBE, question=question)

    async def describe_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        sources = sources_from_messages([message], self.bot.settings.cdn_hosts)
        await answer_interaction(interaction, Task.DESCRIBE, sources)


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Describe(bot))
