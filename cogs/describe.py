"""Describe an image, optionally answering a question about it."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import VisionBot
from bot.gather import PAGES_HELP, pages_word, source_with_pages
from bot.jobs import answer_command, answer_interaction
from bot.task_cog import TaskCog, everywhere
from inference import Task
from inference.prompts import MAX_QUESTION_CHARS

MENU_NAME = "Describe image"


class Describe(TaskCog):
    task = Task.DESCRIBE
    menu_name = MENU_NAME

    @everywhere
    @app_commands.command(name="describe", description="Describe an image, or answer a question about it.")
    @app_commands.describe(
        image="The image to look at (a PDF, animation or short video too)",
        question="What you want to know (optional)",
        pages=PAGES_HELP,
    )
    async def describe_slash(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        question: app_commands.Range[str, 1, MAX_QUESTION_CHARS] | None = None,
        pages: app_commands.Range[str, 1, 40] | None = None,
    ) -> None:
        source = source_with_pages(image, pages, self.bot.settings.max_images)
        await answer_interaction(interaction, Task.DESCRIBE, [source], question=question)

    @commands.command(name="describe")
    async def describe_prefix(self, ctx: commands.Context, *, question: str | None = None) -> None:
        """Describe the image attached to your message (or to the message you reply to).

        `!describe pages:2-3 what is this form for?` reads those pages of a PDF.
        """
        pages, question = pages_word(question)
        await answer_command(ctx, Task.DESCRIBE, question=question, pages=pages)


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Describe(bot))
