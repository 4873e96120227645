"""Read the text out of an image (screenshots, signs, documents). Private by default."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import VisionBot
from bot.context import VisionContext
from bot.gather import source_from_attachment
from bot.jobs import answer_command, answer_interaction
from bot.task_cog import TaskCog
from inference import Task

MENU_NAME = "Extract text"


class Ocr(TaskCog):
    task = Task.OCR
    menu_name = MENU_NAME

    @app_commands.command(name="ocr", description="Read the text in an image.")
    @app_commands.describe(image="The image to read")
    async def ocr_slash(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await answer_interaction(interaction, Task.OCR, [source_from_attachment(image)])

    @commands.command(name="ocr")
    async def ocr_prefix(self, ctx: VisionContext) -> None:
        """Read the text in the image attached to your message (or to the message you reply to)."""
        await answer_command(ctx, Task.OCR)


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Ocr(bot))
