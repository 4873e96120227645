"""User-facing errors and the one handler that turns any failure into a clear reply.

Prefix commands (``on_command_error``), slash commands and context menus
(``CommandTree.on_error``) all end up in :func:`explain`, then in
:func:`send_error_to_context` or :func:`send_error_to_interaction`, which write the
explanation as the final state of the job's :class:`bot.reply.Reply`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine_errors import UNEXPECTED_ERROR_TEXT, engine_error_text
from bot.i18n import text_of
from bot.reply import Outcome
from bot.safe_text import shown_name
from bot.text import N_, T, Text
from inference.errors import EngineBusy, EngineStopping, InferenceError, InvalidRequest

FORBIDDEN_TEXT = N_("I'm missing a Discord permission I need to answer here (send messages, attach files).")
NOT_OWNER_TEXT = N_("Only the bot's owner can use this command.")
SERVER_ONLY_TEXT = N_("This command only works in a server.")
NOT_HERE_TEXT = N_("You can't use this command here.")


class UserFacingError(Exception):
    """A problem the person can understand (and usually fix): its text (a ``N_`` constant or a
    ``T(...)``) is shown in the reader's language; ``str()`` is the English."""

    # Reply only to the person (ephemeral) when the bot has not yet answered publicly.
    private = True


class NoImage(UserFacingError):
    """The request had no image to look at."""


class ImageRejected(UserFacingError):
    """One file cannot be used; the message names the file and says why."""

    def __init__(self, filename: str, reason: str | Text) -> None:
        self.filename = filename
        self.reason = reason
        super().__init__(
            T("I can't use **{filename}**: {reason}.", filename=shown_name(filename), reason=reason)
        )


class AnswerWindowClosed(UserFacingError):
    """Discord would no longer let the bot show a private answer to this command."""

    def __init__(self) -> None:
        super().__init__(
            N_(
                "Discord only lets me answer a command privately for 15 minutes, and this one would run "
                "past that. Please run it again."
            )
        )


class Denied(UserFacingError):
    """The person may not do this here (permissions, limits)."""


class OnCooldown(Denied):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            T("You're going a bit fast: try again in {seconds:.0f} s.", seconds=max(retry_after, 1))
        )


class OverHourlyQuota(Denied):
    def __init__(self, limit: int, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            T(
                "You've made {limit} requests in the last hour, the most allowed here; you can ask again in "
                "{minutes} min.",
                limit=limit,
                minutes=max(1, math.ceil(retry_after / 60)),
            )
        )


class TooManyJobs(Denied):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        if limit == 1:
            super().__init__(N_("You already have a request in progress; wait for it to finish."))
        else:
            super().__init__(
                T("You already have {limit} requests in progress; wait for one to finish.", limit=limit)
            )


@dataclass(frozen=True)
class Explanation:
    """What to tell the person about a failure, and how loudly to log it."""

    text: str | Text  # rendered in the reader's language by the reply
    outcome: Outcome = Outcome.REFUSAL
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
            return Explanation(text_of(error), private=error.private)
        case EngineBusy():
            return Explanation(engine_error_text(error), private=False)
        case InvalidRequest():  # a refusal of what was asked: told privately where Discord allows
            return Explanation(engine_error_text(error))
        case EngineStopping():
            return Explanation(engine_error_text(error), Outcome.STOPPED, private=False)
        case InferenceError():
            return Explanation(engine_error_text(error), Outcome.FAILURE, private=False)
        case commands.NotOwner():
            return Explanation(NOT_OWNER_TEXT)
        case commands.CommandOnCooldown() | app_commands.CommandOnCooldown():
            return Explanation(text_of(OnCooldown(error.retry_after)))
        case commands.NoPrivateMessage() | app_commands.NoPrivateMessage():
            return Explanation(SERVER_ONLY_TEXT)
        case commands.CheckFailure() | app_commands.CheckFailure():
            return Explanation(text_of(error) if str(error) else NOT_HERE_TEXT)
        case commands.UserInputError() | app_commands.TransformerError():
            return Explanation(text_of(error))
        case discord.Forbidden():
            return Explanation(FORBIDDEN_TEXT, Outcome.FAILURE, unexpected=True)
        case _:
            return Explanation(UNEXPECTED_ERROR_TEXT, Outcome.FAILURE, unexpected=True)
