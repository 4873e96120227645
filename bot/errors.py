"""User-facing errors and the one handler that turns any failure into a clear reply.

Prefix commands (``on_command_error``), slash commands and context menus
(``CommandTree.on_error``) all end up in :func:`explain`, then in
:func:`send_error_to_context` or :func:`send_error_to_interaction`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from inference import InferenceError

if TYPE_CHECKING:
    from bot.context import VisionContext

log = logging.getLogger(__name__)

UNEXPECTED_ERROR_TEXT = "Something went wrong, the error was logged."
FORBIDDEN_TEXT = "I'm missing a Discord permission I need to answer here (send messages, attach files)."
SUPPORTED_FORMATS_TEXT = "PNG, JPEG, WEBP, GIF or BMP"


class UserFacingError(Exception):
    """A problem the person can understand (and usually fix); ``str()`` is shown as is."""

    # Reply only to the person (ephemeral) when the bot has not yet answered publicly.
    private = True


class NoImage(UserFacingError):
    """The request had no image to look at."""


class NotEnoughImages(UserFacingError):
    """Comparing needs at least two images."""


class TooManyImages(UserFacingError):
    """More images than the bot accepts in one request."""


class ImageRejected(UserFacingError):
    """One file cannot be used; the message names the file and says why."""

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = filename
        self.reason = reason
        super().__init__(f"I can't use **{discord.utils.escape_markdown(filename)}**: {reason}.")


class Denied(UserFacingError):
    """The person may not do this here (permissions, limits)."""


class OnCooldown(Denied):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"You're going a bit fast: try again in {max(retry_after, 1):.0f} s.")


class TooManyJobs(Denied):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        plural = "request" if limit == 1 else "requests"
        super().__init__(f"You already have {limit} {plural} in progress; wait for one to finish.")


@dataclass(frozen=True)
class Explanation:
    """What to tell the person about a failure, and how loudly to log it."""

    text: str
    private: bool = True
    unexpected: bool = False


def unwrap(error: BaseException) -> BaseException:
    """The exception that actually happened, without discord.py's invoke wrappers."""
    while isinstance(error, commands.CommandInvokeError | app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, commands.HybridCommandError):
        error = unwrap(error.original)
    return error


def explain(error: BaseException) -> Explanation | None:
    """Map any failure to a reply. ``None`` means: say nothing (e.g. an unknown prefix command)."""
    error = unwrap(error)
    match error:
        case commands.CommandNotFound():
            return None
        case UserFacingError():
            return Explanation(str(error), private=error.private)
        case InferenceError():
            return Explanation(str(error) or UNEXPECTED_ERROR_TEXT, private=False)
        case commands.NotOwner():
            return Explanation("Only the bot's owner can use this command.")
        case commands.CommandOnCooldown() | app_commands.CommandOnCooldown():
            return Explanation(str(OnCooldown(error.retry_after)))
        case commands.NoPrivateMessage() | app_commands.NoPrivateMessage():
            return Explanation("This command only works in a server.")
        case commands.CheckFailure() | app_commands.CheckFailure():
            return Explanation(str(error) or "You can't use this command here.")
        case commands.UserInputError() | app_commands.TransformerError():
            return Explanation(str(error))
        case discord.Forbidden():
            return Explanation(FORBIDDEN_TEXT, unexpected=True)
        case _:
            return Explanation(UNEXPECTED_ERROR_TEXT, unexpected=True)


def _log(error: BaseException, explanation: Explanation, where: str) -> None:
    original = unwrap(error)
    if explanation.unexpected:
        log.error("Unexpected error in %s", where, exc_info=original)
    elif isinstance(original, InferenceError):
        log.warning("Inference failed in %s: %s: %s", where, type(original).__name__, original)
    else:
        log.info("Refused %s: %s", where, original)


async def send_error_to_context(ctx: VisionContext, error: BaseException) -> None:
    """Reply to a prefix command with what went wrong (editing the 'working' message if any)."""
    explanation = explain(error)
    if explanation is None:
        return
    _log(error, explanation, f"!{ctx.command.qualified_name if ctx.command else '?'}")
    try:
        if ctx.progress_message is not None:
            await ctx.progress_message.edit(content=explanation.text, attachments=[])
        else:
            await ctx.reply(explanation.text, mention_author=False)
    except discord.HTTPException:
        log.warning("Could not tell the user about an error in %s", ctx.channel, exc_info=True)


async def send_error_to_interaction(interaction: discord.Interaction, error: BaseException) -> None:
    """Answer an interaction with what went wrong, whatever state the interaction is in."""
    explanation = explain(error)
    if explanation is None:
        return
    command = interaction.command
    _log(error, explanation, f"/{command.qualified_name}" if command else "an interaction")
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=explanation.text, attachments=[])
        else:
            await interaction.response.send_message(explanation.text, ephemeral=explanation.private)
    except discord.HTTPException:
        log.warning("Could not tell the user about an error in an interaction", exc_info=True)
