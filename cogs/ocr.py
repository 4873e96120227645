"""Read the text out of an image (screenshots, signs, documents). Private by default.

As plain text (in a code block, exactly as written) or as Markdown (tables, headings, lists):
``/ocr format:markdown``, ``!ocr md``, or the "Read as Markdown" menu.
"""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import VisionBot
from bot.context import VisionContext
from bot.gather import source_from_attachment, sources_from_messages
from bot.jobs import answer_command, answer_interaction
from bot.task_cog import TaskCog
from inference import Task

MENU_NAME = "Extract text"
MARKDOWN_MENU_NAME = "Read as Markdown"
MARKDOWN_WORDS = frozenset({"md", "markdown"})
TEXT_WORDS = frozenset({"text", "txt", "plain"})
FORMAT_HELP = "Say `!ocr` for the text as written, or `!ocr md` for Markdown (tables, headings, lists)."


class Ocr(TaskCog):
    task = Task.OCR
    menu_name = MENU_NAME

    def __init__(self, bot: VisionBot) -> None:
        super().__init__(bot)
        self.markdown_menu = app_commands.ContextMenu(
            name=MARKDOWN_MENU_NAME, callback=self.answer_markdown_menu
        )

    async def cog_load(self) -> None:
        await super().cog_load()
        self.bot.tree.add_command(self.markdown_menu)

    async def cog_unload(self) -> None:
        await super().cog_unload()
        self.bot.tree.remove_command(self.markdown_menu.name, type=self.markdown_menu.type)

    @app_commands.command(name="ocr", description="Read the text in an image.")
    @app_commands.describe(
        image="The image to read",
        output_format="text: exactly as written (default); markdown: tables, headings and lists",
    )
    @app_commands.rename(output_format="format")
    async def ocr_slash(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        output_format: Literal["text", "markdown"] = "text",
    ) -> None:
        await answer_interaction(
            interaction, Task.OCR, [source_from_attachment(image)], markdown=output_format == "markdown"
        )

    async def answer_markdown_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Right-click on a message: its image's text as Markdown (tables, headings, lists)."""
        sources = sources_from_messages([message], self.bot.settings.cdn_hosts)
        await answer_interaction(interaction, Task.OCR, sources, markdown=True)

    @commands.command(name="ocr")
    async def ocr_prefix(self, ctx: VisionContext, output_format: str | None = None) -> None:
        """Read the text in the image attached to your message (or to the message you reply to).

        `!ocr md` gives Markdown: tables, headings and lists.
        """
        word = (output_format or "text").lower()
        if word not in MARKDOWN_WORDS | TEXT_WORDS:
            raise commands.BadArgument(f"I don't know the format `{output_format}`. {FORMAT_HELP}")
        await answer_command(ctx, Task.OCR, markdown=word in MARKDOWN_WORDS)


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Ocr(bot))
