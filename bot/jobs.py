"""One request from start to finish: permissions, images, limits, the engine, the reply.

Cogs call :func:`answer_interaction` (slash commands, context menus) or
:func:`answer_command` (prefix commands); everything else is shared here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import discord

from bot.errors import NoImage, NotEnoughImages, TooManyImages, UserFacingError
from bot.gather import sources_for_command_message
from bot.images import ImageSource, check_source, load_images
from bot.limits import Requester
from bot.replies import AnswerTarget, InteractionTarget, MessageTarget, PlaceInLine, stream_answer
from inference import Request, Task
from inference.prompts import MAX_QUESTION_CHARS

if TYPE_CHECKING:
    from bot.app import VisionBot
    from bot.context import VisionContext

NO_IMAGE_IN_COMMAND_TEXT = "Attach an image to your message, or reply to a message that has one."
NO_IMAGE_IN_MESSAGE_TEXT = "That message has no image I can look at."
STOPPED_BY_DELETE_TEXT = "Stopped: the message that asked was deleted."

log = logging.getLogger(__name__)


class JobsByMessage:
    """Prefix-command jobs by the id of the message that asked, so deleting that message stops the job."""

    def __init__(self) -> None:
        self._tasks: dict[int, asyncio.Task] = {}
        self._deleted: set[int] = set()

    @contextmanager
    def track(self, message_id: int) -> Iterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks[message_id] = task
        try:
            yield
        finally:
            self._tasks.pop(message_id, None)
            self._deleted.discard(message_id)

    def cancel(self, message_id: int) -> bool:
        """Stop the job asked for by this message, if one is running (the engine aborts at its next step)."""
        task = self._tasks.get(message_id)
        if task is None:
            return False
        self._deleted.add(message_id)
        task.cancel()
        return True

    def was_deleted(self, message_id: int) -> bool:
        return message_id in self._deleted


MIN_IMAGES_TO_COMPARE = 2


def clean_question(question: str | None) -> str | None:
    """Trim the question; empty means none. Too long is refused rather than cut."""
    if question is None:
        return None
    question = question.strip()
    if not question:
        return None
    if len(question) > MAX_QUESTION_CHARS:
        raise UserFacingError(
            f"Your question is too long; please keep it under {MAX_QUESTION_CHARS} characters."
        )
    return question


def choose_images(
    sources: Sequence[ImageSource], task: Task, *, max_images: int, no_image_text: str
) -> tuple[ImageSource, ...]:
    """The images this task will look at: the first one, or 2..max_images to compare."""
    if not sources:
        raise NoImage(no_image_text)
    if task is not Task.COMPARE:
        return (sources[0],)
    if len(sources) < MIN_IMAGES_TO_COMPARE:
        raise NotEnoughImages("Comparing needs at least two images; I found only one.")
    if len(sources) > max_images:
        raise TooManyImages(f"You gave me {len(sources)} images; I can compare up to {max_images} at once.")
    return tuple(sources)


async def run_job(
    bot: VisionBot,
    *,
    requester: Requester,
    task: Task,
    sources: Sequence[ImageSource],
    question: str | None,
    target: AnswerTarget,
    no_image_text: str,
) -> str:
    """Check limits, acknowledge, load the images, ask the engine and stream the answer."""
    question = clean_question(question)
    chosen = choose_images(sources, task, max_images=bot.settings.max_images, no_image_text=no_image_text)
    for source in chosen:
        check_source(source, bot.image_limits)
    with bot.limiter.job(requester.user_id):
        await target.start()
        images = await load_images(chosen, bot.image_limits, bot.fetcher)
        request = Request(task=task, images=images, question=question, user_id=requester.user_id)
        place_in_line = PlaceInLine(target)
        return await stream_answer(
            target,
            bot.engine.stream(request, on_position=place_in_line),
            code_block=task is Task.OCR,
            place_in_line=place_in_line,
        )


def is_private(bot: VisionBot, task: Task) -> bool:
    """OCR answers are ephemeral unless the server chose otherwise."""
    return task is Task.OCR and not bot.settings.ocr_public


async def answer_interaction(
    interaction: discord.Interaction,
    task: Task,
    sources: Sequence[ImageSource],
    *,
    question: str | None = None,
    no_image_text: str = NO_IMAGE_IN_MESSAGE_TEXT,
) -> None:
    """Answer a slash command or a message context menu."""
    bot: VisionBot = interaction.client  # type: ignore[assignment]
    requester = Requester.of(interaction.user, interaction.channel, interaction.guild)
    bot.access.check(requester, task)
    await run_job(
        bot,
        requester=requester,
        task=task,
        sources=sources,
        question=question,
        target=InteractionTarget(interaction, ephemeral=is_private(bot, task)),
        no_image_text=no_image_text,
    )


async def answer_command(ctx: VisionContext, task: Task, *, question: str | None = None) -> None:
    """Answer a prefix command about the images on the message or the one it replies to."""
    bot = ctx.bot
    requester = Requester.of(ctx.author, ctx.channel, ctx.guild)
    bot.access.check(requester, task)
    sources = await sources_for_command_message(ctx.message, bot.settings.cdn_hosts)
    with bot.jobs_by_message.track(ctx.message.id):
        try:
            await run_job(
                bot,
                requester=requester,
                task=task,
                sources=sources,
                question=question,
                target=MessageTarget(ctx),
                no_image_text=NO_IMAGE_IN_COMMAND_TEXT,
            )
        except asyncio.CancelledError:
            if not bot.jobs_by_message.was_deleted(ctx.message.id):
                raise  # shutting down, not ours to swallow
            asyncio.current_task().uncancel()
            await _say_stopped(ctx)


async def _say_stopped(ctx: VisionContext) -> None:
    if ctx.progress_message is None:
        return
    try:
        await ctx.progress_message.edit(content=STOPPED_BY_DELETE_TEXT)
    except discord.HTTPException:
        log.info("Could not mark a stopped answer in %s", ctx.channel)
