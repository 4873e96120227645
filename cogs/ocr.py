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
from bot.errors import UserFacingError
from bot.gather import (
    PAGES_HELP,
    pages_word,
    referenced_message,
    source_with_pages,
    sources_from_messages,
)
from bot.jobs import answer_command, answer_interaction
from bot.task_cog import TaskCog, everywhere, menu
from bot.text import N_, T
from inference import Task

MENU_NAME = "Extract text"
MARKDOWN_MENU_NAME = "Read as Markdown"
MARKDOWN_WORDS = frozenset({"md", "markdown"})
TEXT_WORDS = frozenset({"text", "txt", "plain"})
FORMAT_HELP = N_("Say `!ocr` for the text as written, or `!ocr md` for Markdown (tables, headings, lists).")


class Ocr(TaskCog):
    task = Task.OCR
    menu_name = MENU_NAME

    def __init__(self, bot: VisionBot) -> None:
        super().__init__(bot)
        self.markdown_menu = menu(MARKDOWN_MENU_NAME, self.answer_markdown_menu)

    async def cog_load(self) -> None:
        await super().cog_load()
        self.bot.tree.add_command(self.markdown_menu)

    async def cog_unload(self) -> None:
        await super().cog_unload()
        self.bot.tree.remove_command(self.markdown_menu.name, type=self.markdown_menu.type)

    @everywhere
    @app_commands.command(name="ocr", description="Read the text in an image.")
    @app_commands.describe(
        image="The image to read (a PDF too)",
        output_format="text: exactly as written (default); markdown: tables, headings and lists",
        pages=PAGES_HELP,
    )
    @app_commands.rename(output_format="format")
    async def ocr_slash(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        output_format: Literal["text", "markdown"] = "text",
        pages: app_commands.Range[str, 1, 40] | None = None,
    ) -> None:
        source = source_with_pages(image, pages, self.bot.settings.max_images)
        await answer_interaction(interaction, Task.OCR, [source], markdown=output_format == "markdown")

    async def answer_markdown_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Right-click on a message: its image's text as Markdown (tables, headings, lists)."""
        sources = sources_from_messages([message], self.bot.settings.cdn_hosts)
        await answer_interaction(interaction, Task.OCR, sources, markdown=True)

    @commands.command(name="ocr")
    async def ocr_prefix(self, ctx: commands.Context, *, words: str | None = None) -> None:
        """Read the text in the image attached to your message (or to the message you reply to).

        `!ocr md` gives Markdown: tables, headings and lists; `!ocr md pages:2-3` reads those pages of a PDF.
        In reply to an answer, the words after it are a follow-up question (`!ocr what is the total?`).
        """
        first, _, rest = (words or "").strip().partition(" ")
        if first.lower() in MARKDOWN_WORDS | TEXT_WORDS:
            pages, after = pages_word(rest)
            words = f"{first} {after or ''}".strip()
        else:
            pages, words = pages_word(words)
        first, _, rest = (words or "").strip().partition(" ")
        if first.lower() in MARKDOWN_WORDS | TEXT_WORDS:
            markdown, question = first.lower() in MARKDOWN_WORDS, rest.strip() or None
        else:
            markdown, question = False, (words or "").strip() or None
            if question is not None and " " not in question and not await self._replies_to_the_bot(ctx):
                raise UserFacingError(
                    T("I don't know the format `{word}`. {help}", word=question, help=T(FORMAT_HELP))
                )
        await answer_command(ctx, Task.OCR, question=question, markdown=markdown, pages=pages)

    async def _replies_to_the_bot(self, ctx: commands.Context) -> bool:
        replied = await referenced_message(ctx.message)
        return replied is not None and self.bot.user is not None and replied.author.id == self.bot.user.id


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Ocr(bot))
