"""The one place a failure becomes a reply: any error of a command, a menu, a button or a form ends that job's
reply with :func:`bot.errors.explain`'s words, logged as loudly as it deserves."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord.ext import commands

from bot.errors import Explanation, explain, unwrap
from bot.reply import Outcome
from bot.services import services_of
from inference.errors import InferenceError

log = logging.getLogger(__name__)


def _log(error: BaseException, explanation: Explanation, where: str) -> None:
    original = unwrap(error)
    if explanation.unexpected:
        log.error("Unexpected error in %s", where, exc_info=original)
    elif isinstance(original, InferenceError):
        log.warning("Inference failed in %s: %s: %s", where, type(original).__name__, original)
    else:
        log.info("Refused %s: %s", where, original)


async def send_error_to_context(ctx: commands.Context, error: BaseException) -> None:
    """End a prefix command's reply with what went wrong (the 'working' message becomes the explanation)."""
    explanation = explain(error)
    if explanation is None:
        return
    where = f"!{ctx.command.qualified_name if ctx.command else '?'}"
    _log(error, explanation, where)
    bot = services_of(ctx.bot)
    reply = bot.replies.for_context(ctx)
    # A refusal is public here: someone refused moments ago is not told again (nothing shows for it).
    told_lately = explanation.outcome is Outcome.REFUSAL and not bot.refusals.may_tell(ctx.author.id)
    if told_lately and reply.unseen:
        reply.end_unseen(explanation.outcome)
        log.info("Not telling the refusal of %s again so soon", where)
        return
    await reply.finish(explanation.outcome, explanation.text, private=explanation.private)


async def send_error_to_interaction(interaction: discord.Interaction, error: BaseException) -> None:
    """End an interaction's reply with what went wrong, whatever state the interaction is in."""
    explanation = explain(error)
    if explanation is None:
        return
    command = interaction.command
    _log(error, explanation, f"/{command.qualified_name}" if command else "an interaction")
    reply = services_of(interaction.client).replies.for_interaction(interaction)
    await reply.finish(explanation.outcome, explanation.text, private=explanation.private)


def reports_errors(callback: Callable[[Any, discord.Interaction], Awaitable[None]]):
    """For a button's or a form's callback: its errors reach the person as a command's do.

    (discord.py only logs what a component's callback raises, leaving the click unanswered.)
    """

    @functools.wraps(callback)
    async def reporting(self: Any, interaction: discord.Interaction) -> None:
        try:
            await callback(self, interaction)
        except Exception as error:
            await send_error_to_interaction(interaction, error)

    return reporting
