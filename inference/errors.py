"""Typed errors raised by the inference package.

Every error carries a message written for the person who asked, plain and free of internals: a
text marked with ``N_`` or a ``T(...)`` (inference/text.py), so the bot can show it in the reader's
language; ``str(error)`` is the English.
"""

from __future__ import annotations

from inference.text import N_, T, Text

# What people see, shared by the local and the remote engine where the situation is the same.
NOT_READY_TEXT = N_("The model is not loaded yet. Try again in a moment.")
SHUTTING_DOWN_TEXT = N_("The bot is shutting down; please ask again later.")
BUSY_TEXT = N_("I'm busy with other requests right now. Please try again shortly.")
MODEL_FAILED_TEXT = N_("The model failed while answering. Please try again.")
MODEL_UNAVAILABLE_TEXT = N_("The model is unavailable right now; the bot's owner has been told.")
TOO_LARGE_TEXT = N_(
    "This request is too large for the server's memory settings. Try fewer or smaller images."
)


def timed_out_text(seconds: float) -> Text:
    return T("The answer took longer than {seconds:.0f} seconds and was stopped.", seconds=seconds)


class InferenceError(Exception):
    """Base class: something went wrong while answering a request."""


class InvalidRequest(InferenceError):
    """The request itself cannot be answered (no image, too many images, empty prompt...)."""


class EngineUnavailable(InferenceError):
    """The engine is not running: not started yet, failed to load, or shutting down."""


class EngineStopping(EngineUnavailable):
    """The engine is shutting down; open requests end with this."""


class ModelFailed(InferenceError):
    """A model step failed; the requests in it end with a plain message (details go to the log)."""


class EngineBusy(InferenceError):
    """The queue is full; the caller should try again shortly."""


class RequestTimedOut(InferenceError):
    """The request took longer than its time limit and was stopped."""


class OutOfMemory(InferenceError):
    """The accelerator ran out of memory for this request (others keep working)."""


class ModelNotFound(InferenceError):
    """The model path or hub id could not be found or downloaded."""
