"""What people read when the engine cannot answer: the inference package's typed errors, in words.

The engines raise errors with data (``TooManyImages(count=5, limit=4)``); this module is the one
place that turns them into a sentence for the person who asked, translated like every other text.
"""

from __future__ import annotations

from bot.text import N_, T, Text
from inference import errors as e

SHUTTING_DOWN_TEXT = N_("The bot is shutting down; please ask again later.")
BUSY_TEXT = N_("I'm busy with other requests right now. Please try again shortly.")
NOT_READY_TEXT = N_("The model is not loaded yet. Try again in a moment.")
MODEL_FAILED_TEXT = N_("The model failed while answering. Please try again.")
MODEL_UNAVAILABLE_TEXT = N_("The model is unavailable right now; the bot's owner has been told.")
TOO_LARGE_TEXT = N_(
    "This request is too large for the server's memory settings. Try fewer or smaller images."
)
ATTACH_AN_IMAGE_TEXT = N_("Attach at least one image.")
FOLLOW_UP_NEEDS_QUESTION_TEXT = N_("A follow-up needs a question.")
UNEXPECTED_ERROR_TEXT = N_("Something went wrong, the error was logged.")

OUT_OF_MEMORY_TEXT = {
    False: N_("The GPU ran out of memory for this request. Try fewer or smaller images."),
    True: N_("The GPU ran out of memory while answering. Please try again."),
}

# A model server's failures (the remote engine).
UNREACHABLE_TEXT = N_("The model server is not reachable right now. Please try again in a few minutes.")
CUT_OFF_TEXT = N_(
    "The connection to the model server was lost in the middle of the answer. Please try again."
)
SERVER_FAILED_TEXT = N_("The model server failed while answering. Please try again.")
NO_MODEL_TEXT = N_(
    "The model server does not have the model this bot uses right now. Please try again later."
)
REFUSAL_TEXT = {
    e.Refusal.TOO_LONG: N_(
        "This request is too long for the model server (images and answer must fit its context window). "
        "Try fewer or smaller images."
    ),
    e.Refusal.TOO_MANY_IMAGES: N_("The model server accepts fewer images per request. Try fewer images."),
    e.Refusal.BAD_IMAGE: N_("The model server could not read one of the images. Try a different image."),
    e.Refusal.TOO_LARGE: N_(
        "The images are too large to send to the model server. Try fewer or smaller images."
    ),
    e.Refusal.OTHER: N_("The model server refused this request. Try a different image or question."),
}


def timed_out_text(seconds: float) -> Text:
    return T("The answer took longer than {seconds:.0f} seconds and was stopped.", seconds=seconds)


def image_problem_text(error: e.UnreadableImage) -> str | Text:
    """Why a file cannot be used, as the end of "I can't use **name**: ..."."""
    match error.problem:
        case e.ImageProblem.EMPTY:
            return N_("the file is empty")
        case e.ImageProblem.NOT_AN_IMAGE:
            return T("it is not an image I can read ({formats})", formats=error.formats)
        case e.ImageProblem.NO_PIXELS:
            return N_("it has no pixels")
        case e.ImageProblem.TOO_MANY_PIXELS:
            return T(
                "it is {width}×{height} pixels; the limit is {limit:,} pixels in total",
                width=error.width,
                height=error.height,
                limit=error.limit,
            )
        case e.ImageProblem.DECOMPRESSION_BOMB:
            return N_("it has far too many pixels to open safely")
        case e.ImageProblem.DAMAGED:
            return N_("the file is damaged or incomplete")
        case e.ImageProblem.PASSWORD:
            return N_("the document is protected by a password; send it without one")
        case e.ImageProblem.NO_PAGES:
            return N_("the document has no pages")
        case e.ImageProblem.NO_SUCH_PAGE:
            return T("the document has only {count} pages", count=error.limit)
        case e.ImageProblem.NO_VIDEO:
            return N_("the file has no video in it")
        case e.ImageProblem.TOO_LONG:
            return T("it is longer than {minutes} minutes, the most I watch", minutes=error.limit // 60)
        case e.ImageProblem.TOO_MANY_FRAMES:
            return N_("it has too many frames, or frames too large, to read in reasonable time")


def engine_error_text(error: e.InferenceError) -> str | Text:
    """What to tell the person who asked, for any error an engine raised."""
    match error:
        case e.NoImage():
            return ATTACH_AN_IMAGE_TEXT
        case e.TooManyImages(count=count, limit=limit):
            # Only compare takes more than one picture.
            return T(
                "You gave me {count} images; I can compare up to {limit} at once.", count=count, limit=limit
            )
        case e.TooFewImages():  # one picture (none is NoImage), and compare needs two
            return N_("Comparing needs at least two images; I found only one.")
        case e.QuestionTooLong(length=length, limit=limit):
            return T(
                "The question is too long ({length} characters; the limit is {limit}).",
                length=length,
                limit=limit,
            )
        case e.QuestionNeeded():
            return FOLLOW_UP_NEEDS_QUESTION_TEXT
        case e.TooManyTurns(limit=limit):
            return T(
                "This conversation has reached {limit} questions; start a new one with a fresh command.",
                limit=limit,
            )
        case e.UnreadableImage():
            return image_problem_text(error)
        case e.TooLarge():
            return TOO_LARGE_TEXT
        case e.ServerRefused(reason=reason):
            return REFUSAL_TEXT[reason]
        case e.NotReady():
            return NOT_READY_TEXT
        case e.EngineStopping():
            return SHUTTING_DOWN_TEXT
        case e.ServerUnreachable():
            return UNREACHABLE_TEXT
        case e.AnswerCutOff():
            return CUT_OFF_TEXT
        case e.ServerFailed():
            return SERVER_FAILED_TEXT
        case e.EngineUnavailable():  # dead, or failed to start
            return MODEL_UNAVAILABLE_TEXT
        case e.ModelFailed():
            return MODEL_FAILED_TEXT
        case e.EngineBusy():
            return BUSY_TEXT
        case e.RequestTimedOut(seconds=seconds):
            return timed_out_text(seconds)
        case e.OutOfMemory(while_answering=while_answering):
            return OUT_OF_MEMORY_TEXT[while_answering]
        case e.ModelNotFound():
            return NO_MODEL_TEXT
        case _:  # a request the engine cannot take for a reason no person can act on
            return UNEXPECTED_ERROR_TEXT
