"""Typed errors raised by the inference package.

Every error carries a message written for the person who asked: the bot shows
``str(error)`` as it is, so keep these plain and free of internals.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class: something went wrong while answering a request."""


class InvalidRequest(InferenceError):
    """The request itself cannot be answered (no image, too many images, empty prompt...)."""


class EngineUnavailable(InferenceError):
    """The engine is not running: not started yet, failed to load, or shutting down."""


class EngineBusy(InferenceError):
    """The queue is full; the caller should try again shortly."""


class RequestTimedOut(InferenceError):
    """The request took longer than its time limit and was stopped."""


class OutOfMemory(InferenceError):
    """The accelerator ran out of memory for this request (others keep working)."""


class ModelNotFound(InferenceError):
    """The model path or hub id could not be found or downloaded."""
