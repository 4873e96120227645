"""Typed errors raised by the inference package.

Each error says what happened with data (counts, limits, seconds), never in sentences meant for a
server's members: the bot words and translates them (bot/engine_errors.py), as vLLM leaves wording
to its front ends. ``str(error)`` is a short English summary for logs and the command line.
"""

from __future__ import annotations

import enum


class InferenceError(Exception):
    """Base class: something went wrong while answering a request."""


# -- the request cannot be answered as it is -------------------------------------------------------
class InvalidRequest(InferenceError):
    """The request itself cannot be answered (no image, too many images, too long...)."""


class NoImage(InvalidRequest):
    def __init__(self) -> None:
        super().__init__("the request has no image")


class TooManyImages(InvalidRequest):
    def __init__(self, count: int, limit: int) -> None:
        self.count, self.limit = count, limit
        super().__init__(f"{count} images; at most {limit} per request")


class TooFewImages(InvalidRequest):
    """Comparing needs ``minimum`` images."""

    def __init__(self, count: int, minimum: int) -> None:
        self.count, self.minimum = count, minimum
        super().__init__(f"{count} image(s); comparing needs at least {minimum}")


class QuestionTooLong(InvalidRequest):
    def __init__(self, length: int, limit: int) -> None:
        self.length, self.limit = length, limit
        super().__init__(f"the question has {length} characters; the limit is {limit}")


class QuestionNeeded(InvalidRequest):
    """A follow-up in a conversation came without a question."""

    def __init__(self) -> None:
        super().__init__("a follow-up needs a question")


class TooManyTurns(InvalidRequest):
    """A conversation has reached the most questions one may hold."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the conversation has reached {limit} questions")


class ImageProblem(enum.Enum):
    EMPTY = "the file is empty"
    NOT_AN_IMAGE = "not an image in a supported format"
    NO_PIXELS = "no pixels"
    TOO_MANY_PIXELS = "more pixels than the limit"
    DECOMPRESSION_BOMB = "far too many pixels to open safely"
    DAMAGED = "damaged or incomplete"
    PASSWORD = "the document is protected by a password"
    NO_PAGES = "the document has no pages"
    NO_SUCH_PAGE = "the document has fewer pages than asked for"
    NO_VIDEO = "the file has no video in it"
    TOO_LONG = "longer than the limit"
    TOO_MANY_FRAMES = "too many frames to read"


class UnreadableImage(InvalidRequest):
    """A file that cannot be used as an image. ``width``/``height``/``limit`` come with TOO_MANY_PIXELS;
    ``formats`` with NOT_AN_IMAGE; ``limit`` with NO_SUCH_PAGE (the pages the document has), TOO_LONG (the
    most seconds) and TOO_MANY_FRAMES (the most frames read of one file)."""

    def __init__(
        self,
        problem: ImageProblem,
        *,
        width: int = 0,
        height: int = 0,
        limit: int = 0,
        formats: str = "",
    ) -> None:
        self.problem = problem
        self.width, self.height, self.limit, self.formats = width, height, limit, formats
        detail = problem.value
        if problem is ImageProblem.NOT_AN_IMAGE:
            detail += f" ({formats})"
        elif problem is ImageProblem.TOO_MANY_PIXELS:
            detail = f"it is {width}×{height} pixels; the limit is {limit:,} pixels in total"
        elif problem in (ImageProblem.NO_SUCH_PAGE, ImageProblem.TOO_LONG, ImageProblem.TOO_MANY_FRAMES):
            detail += f" ({limit})"
        super().__init__(detail)


class TooLarge(InvalidRequest):
    """The request does not fit in the memory the engine has for one request (its KV cache)."""

    def __init__(self, tokens: int = 0, capacity: int = 0) -> None:
        self.tokens, self.capacity = tokens, capacity
        super().__init__(f"the request needs {tokens} tokens of cache; {capacity} fit")


class Refusal(enum.Enum):
    """Why a model server refused a request."""

    TOO_LONG = "longer than the server's context window"
    TOO_MANY_IMAGES = "more images than the server accepts"
    BAD_IMAGE = "an image the server could not read"
    TOO_LARGE = "too large to send"
    OTHER = "refused"


class ServerRefused(InvalidRequest):
    """A model server refused the request (HTTP 400/413/422, or an error in its stream)."""

    def __init__(self, reason: Refusal, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"the model server refused the request ({reason.value}): {detail}".rstrip(": "))


# -- the engine cannot answer now ------------------------------------------------------------------
class EngineUnavailable(InferenceError):
    """The engine is not running: not started yet, failed to load, or shutting down."""


class NotReady(EngineUnavailable):
    def __init__(self) -> None:
        super().__init__("the engine has not started")


class EngineStopping(EngineUnavailable):
    """The engine is shutting down; open requests end with this."""

    def __init__(self) -> None:
        super().__init__("the engine is shutting down")


class EngineDead(EngineUnavailable):
    """The model stopped working; ``reason`` (for the owner's log) says why. Every later request fails."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the model stopped working: {reason}")


class ServerUnreachable(EngineUnavailable):
    """The model server could not be reached, or answered with a server error, after every retry."""


class AnswerCutOff(EngineUnavailable):
    """The connection to the model server broke after part of the answer had arrived."""


class ServerFailed(EngineUnavailable):
    """The model server reported a failure, or sent something that is not an answer."""


class ModelFailed(InferenceError):
    """A model step failed; the requests in it end with this (details go to the log)."""

    def __init__(self, detail: str = "a model step failed") -> None:
        super().__init__(detail)


class EngineBusy(InferenceError):
    """The queue is full (or the server said 429); the caller should try again shortly."""

    def __init__(self, detail: str = "the queue is full") -> None:
        super().__init__(detail)


class RequestTimedOut(InferenceError):
    """The request took longer than its time limit (``seconds``) and was stopped."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the request took longer than {seconds:.0f} s")


class OutOfMemory(InferenceError):
    """The accelerator ran out of memory for this request (others keep working). ``while_answering``:
    the request had begun answering (rather than being new)."""

    def __init__(self, while_answering: bool) -> None:
        self.while_answering = while_answering
        super().__init__(
            "out of GPU memory " + ("while answering" if while_answering else "for a new request")
        )


class ModelNotFound(InferenceError):
    """The model could not be found: a path or hub id at load, or a name a model server does not serve."""
