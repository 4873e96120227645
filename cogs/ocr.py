"""Read the text out of an image (screenshots, signs, documents). Private by default."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import VisionBot
from bot.context import VisionContext
from bot.gather import source_from_attachment, sources_from_messages
from bot.jobs import answer_command, answer_interaction
from inference import Task

MENU_NAME = "Extract text"


class Ocr(commands.Cog):
    def __init__(self, bot: VisionBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name=MENU_NAME, callback=self.ocr_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(name="ocr", description="Read the text in an image.")
    @app_commands.describe(image="The image to read")
    async def ocr_slash(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await answer_interaction(interaction, Task.OCR, [source_from_attachment(image)])

    @commands.command(name="ocr")
    async def ocr_prefix(self, ctx: VisionContext) -> None:
        """Read the text in the image attached to your message (or to the message you reply to)."""
        await answer_command(ctx, Task.OCR)

    async def ocr_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        sources = sources_from_messages([message], self.bot.settings.cdn_hosts)
        await answer_interaction(interaction, Task.OCR, sources)


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Ocr(bot))
