"""Compare two to four images, optionally answering a question about them."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import VisionBot
from bot.gather import source_from_attachment
from bot.jobs import answer_command, answer_interaction
from bot.task_cog import TaskCog, everywhere
from inference import Task
from inference.prompts import MAX_QUESTION_CHARS

MENU_NAME = "Compare images"


class Compare(TaskCog):
    task = Task.COMPARE
    menu_name = MENU_NAME

    @everywhere
    @app_commands.command(name="compare", description="Compare two to four images.")
    @app_commands.describe(
        image1="First image",
        image2="Second image",
        image3="Third image (optional)",
        image4="Fourth image (optional)",
        question="What you want to know about them (optional)",
    )
    async def compare_slash(
        self,
        interaction: discord.Interaction,
        image1: discord.Attachment,
        image2: discord.Attachment,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        question: app_commands.Range[str, 1, MAX_QUESTION_CHARS] | None = None,
    ) -> None:
        images = [image for image in (image1, image2, image3, image4) if image is not None]
        sources = [source_from_attachment(image) for image in images]
        await answer_interaction(interaction, Task.COMPARE, sources, question=question)

    @commands.command(name="compare")
    async def compare_prefix(self, ctx: commands.Context, *, question: str | None = None) -> None:
        """Compare the images attached to your message (and to the message you reply to)."""
        await answer_command(ctx, Task.COMPARE, question=question)


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Compare(bot))
