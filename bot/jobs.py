"""One request from start to finish: permissions, images, limits, the engine, the reply.

Cogs call :func:`answer_interaction` (slash commands, context menus, an answer's follow-up form) or
:func:`answer_command` (prefix commands, replies to an answer); everything else is shared here.
Every job runs :func:`stoppable`, so a Stop button or a deleted command message ends it cleanly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

import discord

from bot.conversation import QUESTION_NEEDED_TEXT, Answered
from bot.error_replies import send_error_to_context
from bot.errors import (
    AnswerWindowClosed,
    NoImage,
    UserFacingError,
)
from bot.gather import parse_pages, referenced_message, refresh_sources, sources_from_messages
from bot.i18n import language_name, render
from bot.images import ImageSource, check_sources, fetch_pictures
from bot.limits import Requester
from bot.log_context import set_request_id
from bot.reply import Controls, Outcome, Reply, ReplyGone
from bot.safe_text import shown_name
from bot.services import Services, services_of
from bot.text import N_, T, Text
from inference import Request, Task, Turn
from inference.prompts import check_image_count, check_turn_count, clean_question

if TYPE_CHECKING:
    from discord.ext import commands

NO_IMAGE_IN_COMMAND_TEXT = N_("Attach an image to your message, or reply to a message that has one.")
NO_IMAGE_IN_MESSAGE_TEXT = N_("That message has no image I can look at.")
STOPPED_BY_DELETE_TEXT = N_("Stopped: the message that asked was deleted.")
STOPPED_OUTPUT_GONE_TEXT = N_("Stopped: the answer could not be shown any more.")
CANNOT_SEE_OTHERS_TEXT = N_(
    "I can't see pictures in messages that don't mention me: this bot runs without Discord's Message "
    "Content intent. Right-click the message → Apps → Describe image instead, or attach the picture to a "
    "message that mentions me."
)


def stopped_by(name: str) -> Text:
    """The stop message, naming who stopped it: their display name as plain text (no Markdown, no link)."""
    return T("Stopped by {name}.", name=shown_name(name))


def trimmed_note(count: int) -> Text:
    return T(
        "This conversation grew too long for my memory, so I left out its oldest follow-up questions "
        "({count}); the images and the first answer stay.",
        count=count,
    )


THREAD_NAME_CHARS = 100  # Discord's longest thread name

# A private answer cannot outlive the interaction token, so it gets at most the time left (less a
# margin); a job with less than this left is refused rather than started.
MIN_ANSWER_TIME_S = 20.0

log = logging.getLogger(__name__)


async def stoppable(bot: Services, job_id: int, reply: Reply, work: Awaitable[None]) -> None:
    """Run a job so that :meth:`RunningJobs.stop` ends it with its text (shutdown still cancels it)."""
    with bot.running_jobs.track(job_id):
        try:
            await work
        except asyncio.CancelledError:
            text = bot.running_jobs.stop_text(job_id)
            if text is None:
                raise  # shutting down: the bot ends open replies itself
            current = asyncio.current_task()
            assert current is not None  # a coroutine run by a task
            current.uncancel()
            await reply.finish(Outcome.STOPPED, text)


def choose_images(
    sources: Sequence[ImageSource], task: Task, *, max_images: int, no_image_text: str
) -> tuple[ImageSource, ...]:
    """The images this task will look at: the first one, or 2..max_images to compare."""
    if not sources:
        raise NoImage(no_image_text)
    if task is not Task.COMPARE:
        return (sources[0],)
    check_image_count(len(sources), max_images, task)  # the engines' own rule, before anything is downloaded
    return tuple(sources)


async def run_job(
    bot: Services,
    *,
    requester: Requester,
    task: Task,
    sources: Sequence[ImageSource],
    question: str | None,
    reply: Reply,
    no_image_text: str,
    job_id: int,
    history: tuple[Turn, ...] = (),
    markdown: bool = False,
    asked_in: int | None = None,
    channel: object = None,
) -> None:
    """Check limits, acknowledge, load the images, ask the engine and stream the answer into ``reply``.

    ``history`` makes it a follow-up in a conversation; a shown answer is remembered for the next
    one, with ``asked_in`` (the message that asked, if any) among the messages whose deletion forgets it.
    ``markdown``: an OCR answer as Markdown. Failures propagate to the error handler, which writes them
    into the same reply. A reply that can no longer be shown (its message deleted, a
    permission removed) ends the job quietly. Where the server chose answer threads, a public answer in a
    text ``channel`` then opens a thread for its follow-ups.
    """
    question = clean_question(question)
    if history and question is None:
        raise UserFacingError(QUESTION_NEEDED_TEXT)
    check_turn_count(len(history) + 1)
    chosen = choose_images(sources, task, max_images=bot.settings.max_images, no_image_text=no_image_text)
    check_sources(chosen, bot.image_limits)
    answer_time_limit(reply)  # too late? refused before acknowledging
    private = reply.surface.private
    reply.controls = Controls(
        job_id=job_id,
        asker_id=requester.user_id,
        private=private,
        locale=reply.private_locale if private else reply.locale,
    )
    reply.markdown = markdown
    policy = bot.policy(requester.guild_id)
    with (
        bot.limiter.job(requester.user_id, cooldown_s=policy.cooldown_s, max_jobs=policy.jobs_per_person),
        # A full line (or this server's full share of it) says "busy" before anything is downloaded.
        bot.engine.hold_place(group_id=requester.guild_id) as place,
    ):
        try:
            await reply.acknowledge()
            pictures = await fetch_pictures(
                chosen,
                bot.image_limits,
                bot.fetcher,
                num_crops=bot.engine.picture_crops,
                max_pictures=1 if task is Task.COMPARE else bot.settings.max_images,
            )
            request = Request(
                task=task,
                images=pictures.images,
                media=pictures.media,
                labels=pictures.labels,
                num_crops=pictures.num_crops,
                language=language_name(reply.private_locale) if policy.answers_in_askers_language else None,
                question=question,
                user_id=requester.user_id,
                timeout_s=answer_time_limit(reply),
                history=history,
                markdown=markdown,
                group_id=requester.guild_id,
            )

            def tell_trimmed(count: int) -> None:
                reply.notes.append(trimmed_note(count))

            def tell_place(position: int) -> None:
                reply.place_in_line(position, bot.engine.wait_s(position))

            pieces = bot.engine.stream(request, on_position=tell_place, on_trimmed=tell_trimmed, place=place)
            answer = await reply.stream(pieces)
        except ReplyGone as gone:
            log.info("Stopped a job whose answer can no longer be shown: %s", gone)
            await reply.finish(Outcome.STOPPED, STOPPED_OUTPUT_GONE_TEXT)
            return
    if reply.outcome is Outcome.ANSWER and reply.delivered:
        turns = (*history, Turn(question, answer.strip()))
        answered = Answered(
            task,
            chosen,
            turns,
            requester.user_id,
            private,
            markdown,
            channel_id=requester.channel_id,
            asked_in=asked_in,
        )
        message_ids = await reply.message_ids()
        await bot.conversations.remember(message_ids, answered)
        if policy.answer_threads and not private and isinstance(channel, discord.TextChannel) and message_ids:
            await open_thread(channel, message_ids[0], chosen[0].filename, reply.locale)


async def open_thread(
    channel: discord.TextChannel, answer_id: int, about: str, locale: discord.Locale | None
) -> None:
    """A thread on the answer for its follow-ups; without the permission to make one, the answer stays
    as it is (and the log says why)."""
    name = render(T("Follow-ups: {name}", name=about), locale)[:THREAD_NAME_CHARS]
    try:
        await channel.create_thread(name=name, message=discord.Object(id=answer_id))
    except discord.HTTPException as error:
        log.warning("Could not open a thread on answer %s in #%s: %s", answer_id, channel.id, error)


async def answer_in_thread(ctx: commands.Context) -> bool:
    """A member's message in a thread the bot opened on an answer (or in a forum post it answered in), in a
    server that chose answer threads: a follow-up of the thread's latest answer, without a mention or a
    reply. False when the message is not one (the bot then leaves it alone)."""
    bot = services_of(ctx.bot)
    thread = ctx.channel
    question = (ctx.message.content or "")[len(ctx.prefix or "") :].strip()  # "@bot ..." counts too
    if not isinstance(thread, discord.Thread) or not question or bot.user is None:
        return False
    if not bot.policy(ctx.guild.id if ctx.guild else None).answer_threads:
        return False
    opened_by_bot = thread.owner_id == bot.user.id
    if not opened_by_bot and not isinstance(thread.parent, discord.ForumChannel):
        return False
    latest = await bot.conversations.latest_asked_in(thread.id)
    if latest is None and opened_by_bot and await bot.conversations.is_kept(thread.id):
        latest = thread.id  # the answer the thread was opened on
    if latest is None:
        return False
    try:
        await answer_command(ctx, Task.DESCRIBE, question=question, earlier_id=latest)
    except Exception as error:  # not a command, so discord.py's error event does not see it
        await send_error_to_context(ctx, error)
    return True


def answer_time_limit(reply: Reply) -> float | None:
    """How long the engine may take so that the answer can still be shown, or None for no bound beyond the
    engine's own (``REQUEST_TIMEOUT_S``).

    Only a private interaction answer is bound: a public one moves to a channel message when the
    interaction token runs out. Raises :class:`AnswerWindowClosed` when too little time is left.
    """
    left = reply.surface.answer_window_s()
    if left is None:
        return None
    if left < MIN_ANSWER_TIME_S:
        raise AnswerWindowClosed()
    return left


def is_private(bot: Services, task: Task, guild_id: int | None) -> bool:
    """OCR answers are ephemeral unless the server (or the owner) chose otherwise."""
    return task is Task.OCR and not bot.policy(guild_id).ocr_public


async def answer_interaction(
    interaction: discord.Interaction,
    task: Task,
    sources: Sequence[ImageSource],
    *,
    question: str | None = None,
    no_image_text: str = NO_IMAGE_IN_MESSAGE_TEXT,
    markdown: bool = False,
    earlier: Answered | None = None,
    private: bool | None = None,
) -> None:
    """Answer a slash command, a message context menu, or a follow-up asked with an answer's button.

    A follow-up (``earlier``) keeps the conversation's task, images and format, and is shown like
    the answer it continues (public or private). ``private`` forces the answer's visibility.
    """
    bot: Services = services_of(interaction.client)
    set_request_id(f"i{interaction.id}")
    if earlier is not None:
        task, markdown = earlier.task, earlier.markdown
    if only_installed_by_the_user(interaction):
        # The bot is not there: it answers privately, and cannot read the message again later.
        private, sources = True, [dataclasses.replace(s, channel_id=None, message_id=None) for s in sources]
    elif private is None:
        private = earlier.private if earlier is not None else is_private(bot, task, interaction.guild_id)
    reply = bot.replies.for_interaction(interaction, ephemeral=private, code_block=task is Task.OCR)
    reply.task = task.value
    requester = requester_of(interaction)
    bot.policy(requester.guild_id).access.check(requester, task)
    history: tuple[Turn, ...] = ()
    if earlier is not None:
        sources, history = await continue_conversation(bot, requester, earlier), earlier.turns
    job = run_job(
        bot,
        requester=requester,
        task=task,
        sources=sources,
        question=question,
        reply=reply,
        no_image_text=no_image_text,
        job_id=interaction.id,
        history=history,
        markdown=markdown,
        channel=interaction.channel,
    )
    await stoppable(bot, interaction.id, reply, job)


def only_installed_by_the_user(interaction: discord.Interaction) -> bool:
    """Used through a person's own install of the app somewhere the bot itself is not: a server that
    did not add it, or a DM between other people. The bot sees only what the interaction carries."""
    return (
        interaction.is_user_integration()
        and not interaction.is_guild_integration()
        and not (interaction.context is not None and interaction.context.dm_channel)
    )


def requester_of(interaction: discord.Interaction) -> Requester:
    """Who asks and where; the server's id even where the bot is not in it (a user install)."""
    requester = Requester.of(interaction.user, interaction.channel, interaction.guild)
    return dataclasses.replace(requester, guild_id=interaction.guild_id)


async def continue_conversation(bot: Services, requester: Requester, earlier: Answered) -> list[ImageSource]:
    """Check a follow-up may be asked, and find the conversation's images again (fresh links)."""
    bot.policy(requester.guild_id).access.check(
        requester, earlier.task
    )  # the conversation's task decides (OCR may be limited to roles)
    earlier.check_may_follow_up(requester.user_id)
    return list(await refresh_sources(bot, earlier.sources, bot.settings.cdn_hosts))


async def answer_command(
    ctx: commands.Context,
    task: Task,
    *,
    question: str | None = None,
    markdown: bool = False,
    earlier_id: int | None = None,
    pages: str | None = None,
) -> None:
    """Answer a prefix command about the images on the message or the one it replies to.

    In reply to one of the bot's answers (or with ``earlier_id``, an answer's first message) it is a
    follow-up in that answer's conversation (whose task, images and format it keeps). ``pages`` (as typed
    after ``pages:``) picks a document's pages.
    """
    bot = services_of(ctx.bot)
    set_request_id(f"m{ctx.message.id}")
    reply = bot.replies.for_context(ctx, code_block=task is Task.OCR)
    reply.task = task.value
    requester = Requester.of(ctx.author, ctx.channel, ctx.guild)
    bot.policy(requester.guild_id).access.check(requester, task)
    replied = await referenced_message(ctx.message)
    history: tuple[Turn, ...] = ()
    if (
        earlier_id is None
        and replied is not None
        and bot.user is not None
        and replied.author.id == bot.user.id
    ):
        earlier_id = replied.id
    if earlier_id is not None:
        earlier = await bot.conversations.recall(earlier_id)
        sources = await continue_conversation(bot, requester, earlier)
        task, history, markdown = earlier.task, earlier.turns, earlier.markdown
        reply.task, reply.code_block = task.value, task is Task.OCR
    else:
        sources = sources_from_messages(
            [ctx.message, *([replied] if replied else [])], bot.settings.cdn_hosts
        )
        if not sources and replied is not None and not bot.intents.message_content:
            # Discord hid the replied-to message's pictures: say why, rather than that it has none.
            raise NoImage(CANNOT_SEE_OTHERS_TEXT)
        if pages is not None and sources:
            sources[0] = dataclasses.replace(sources[0], pages=parse_pages(pages, bot.settings.max_images))
    job = run_job(
        bot,
        requester=requester,
        task=task,
        sources=sources,
        question=question,
        reply=reply,
        no_image_text=NO_IMAGE_IN_COMMAND_TEXT,
        job_id=ctx.message.id,
        history=history,
        markdown=markdown,
        asked_in=ctx.message.id,
        channel=ctx.channel,
    )
    await stoppable(bot, ctx.message.id, reply, job)


async def answer_follow_up_mention(ctx: commands.Context) -> None:
    """ "@bot <question>" in reply to one of the bot's answers: a follow-up without a command word.

    A mention in reply to anything else is left alone (people talk about the bot, too).
    """
    bot = services_of(ctx.bot)
    replied = await referenced_message(ctx.message)
    if replied is None or bot.user is None or replied.author.id != bot.user.id:
        return
    question = ctx.message.content[len(ctx.prefix or "") :].strip()
    try:
        await answer_command(ctx, Task.DESCRIBE, question=question)  # the conversation's own task is used
    except Exception as error:  # not a command, so discord.py's error event does not see it
        await send_error_to_context(ctx, error)
