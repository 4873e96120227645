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

from bot.conversation import QUESTION_NEEDED_TEXT, Answered
from bot.errors import (
    AnswerWindowClosed,
    NoImage,
    NotEnoughImages,
    TooManyImages,
    UserFacingError,
    send_error_to_context,
)
from bot.gather import referenced_message, sources_from_messages
from bot.images import ImageSource, check_sources, fetch_images
from bot.limits import Requester
from bot.log_context import set_request_id
from bot.reply import InteractionSurface, Outcome, Reply, ReplyGone
from inference import Request, Task, Turn
from inference.prompts import MIN_COMPARE_IMAGES, check_turn_count, clean_question

if TYPE_CHECKING:
    from bot.app import VisionBot
    from bot.context import VisionContext

NO_IMAGE_IN_COMMAND_TEXT = "Attach an image to your message, or reply to a message that has one."
NO_IMAGE_IN_MESSAGE_TEXT = "That message has no image I can look at."
STOPPED_BY_DELETE_TEXT = "Stopped: the message that asked was deleted."
STOPPED_OUTPUT_GONE_TEXT = "Stopped: the answer could not be shown any more."
# A private answer cannot outlive the interaction token, so it gets at most the time left (less a
# margin); a job with less than this left is refused rather than started.
MIN_ANSWER_TIME_S = 20.0

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


def choose_images(
    sources: Sequence[ImageSource], task: Task, *, max_images: int, no_image_text: str
) -> tuple[ImageSource, ...]:
    """The images this task will look at: the first one, or 2..max_images to compare."""
    if not sources:
        raise NoImage(no_image_text)
    if task is not Task.COMPARE:
        return (sources[0],)
    if len(sources) < MIN_COMPARE_IMAGES:
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
    reply: Reply,
    no_image_text: str,
    history: tuple[Turn, ...] = (),
) -> None:
    """Check limits, acknowledge, load the images, ask the engine and stream the answer into ``reply``.

    ``history`` makes it a follow-up in a conversation; a shown answer is remembered for the next
    one. Failures propagate to the error handler, which writes them into the same reply. A reply that
    can no longer be shown (its message deleted, a permission removed) ends the job quietly.
    """
    question = clean_question(question)
    if history and question is None:
        raise UserFacingError(QUESTION_NEEDED_TEXT)
    check_turn_count(len(history) + 1)
    chosen = choose_images(sources, task, max_images=bot.settings.max_images, no_image_text=no_image_text)
    check_sources(chosen, bot.image_limits)
    answer_time_limit(reply, bot.settings.request_timeout_s)  # too late? refused before acknowledging
    with bot.limiter.job(requester.user_id):
        try:
            await reply.acknowledge()
            images = await fetch_images(chosen, bot.image_limits, bot.fetcher)
            request = Request(
                task=task,
                images=images,
                question=question,
                user_id=requester.user_id,
                timeout_s=answer_time_limit(reply, bot.settings.request_timeout_s),
                history=history,
            )
            answer = await reply.stream(bot.engine.stream(request, on_position=reply.place_in_line))
        except ReplyGone as gone:
            log.info("Stopped a job whose answer can no longer be shown: %s", gone)
            await reply.finish(Outcome.STOPPED, STOPPED_OUTPUT_GONE_TEXT)
            return
    if reply.outcome is Outcome.ANSWER and reply.delivered:
        turns = (*history, Turn(question, answer.strip()))
        await remember_answer(bot, reply, Answered(task, chosen, turns, requester.user_id))


async def remember_answer(bot: VisionBot, reply: Reply, answered: Answered) -> None:
    """Keep a shown answer under the id of the message showing it, so that replying to it can follow up."""
    message_id = await reply.surface.main_message_id()
    if message_id is not None:  # None: a private answer, which Discord lets nobody reply to
        bot.conversations.remember(message_id, answered)


def answer_time_limit(reply: Reply, request_timeout_s: float) -> float | None:
    """How long the engine may take so that the answer can still be shown, or None for no extra bound.

    Only a private interaction answer is bound: a public one moves to a channel message when the
    interaction token runs out. Raises :class:`AnswerWindowClosed` when too little time is left.
    """
    surface = reply.surface
    if not isinstance(surface, InteractionSurface) or not surface.ephemeral:
        return None
    left = surface.seconds_left()
    if left < MIN_ANSWER_TIME_S:
        raise AnswerWindowClosed()
    return min(left, request_timeout_s)


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
    set_request_id(f"i{interaction.id}")
    reply = bot.replies.for_interaction(
        interaction, ephemeral=is_private(bot, task), code_block=task is Task.OCR
    )
    reply.task = task.value
    requester = Requester.of(interaction.user, interaction.channel, interaction.guild)
    bot.access.check(requester, task)
    await run_job(
        bot,
        requester=requester,
        task=task,
        sources=sources,
        question=question,
        reply=reply,
        no_image_text=no_image_text,
    )


async def answer_command(ctx: VisionContext, task: Task, *, question: str | None = None) -> None:
    """Answer a prefix command about the images on the message or the one it replies to."""
    bot = ctx.bot
    set_request_id(f"m{ctx.message.id}")
    reply = bot.replies.for_context(ctx, code_block=task is Task.OCR)
    reply.task = task.value
    requester = Requester.of(ctx.author, ctx.channel, ctx.guild)
    bot.access.check(requester, task)
    replied = await referenced_message(ctx.message)
    history: tuple[Turn, ...] = ()
    if replied is not None and bot.user is not None and replied.author.id == bot.user.id:
        earlier = bot.conversations.recall(replied.id)  # a follow-up on one of the bot's answers
        task, sources, history = earlier.task, list(earlier.sources), earlier.turns
        bot.access.check(requester, task)  # the conversation's task decides (OCR may be limited to roles)
        reply.task, reply.code_block = task.value, task is Task.OCR
    else:
        sources = sources_from_messages(
            [ctx.message, *([replied] if replied else [])], bot.settings.cdn_hosts
        )
    with bot.jobs_by_message.track(ctx.message.id):
        try:
            await run_job(
                bot,
                requester=requester,
                task=task,
                sources=sources,
                question=question,
                reply=reply,
                no_image_text=NO_IMAGE_IN_COMMAND_TEXT,
                history=history,
            )
        except asyncio.CancelledError:
            if not bot.jobs_by_message.was_deleted(ctx.message.id):
                raise  # shutting down: the bot ends open replies itself
            asyncio.current_task().uncancel()
            await reply.finish(Outcome.STOPPED, STOPPED_BY_DELETE_TEXT)


async def answer_follow_up_mention(ctx: VisionContext) -> None:
    """ "@bot <question>" in reply to one of the bot's answers: a follow-up without a command word.

    A mention in reply to anything else is left alone (people talk about the bot, too).
    """
    bot = ctx.bot
    replied = await referenced_message(ctx.message)
    if replied is None or bot.user is None or replied.author.id != bot.user.id:
        return
    question = ctx.message.content[len(ctx.prefix or "") :].strip()
    try:
        await answer_command(ctx, Task.DESCRIBE, question=question)  # the conversation's own task is used
    except Exception as error:  # not a command, so discord.py's error event does not see it
        await send_error_to_context(ctx, error)
