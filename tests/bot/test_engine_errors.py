"""Every error an engine raises has words for people, chosen in bot/ from the error's type and data."""

from __future__ import annotations

import pytest

from bot.engine_errors import UNEXPECTED_ERROR_TEXT, engine_error_text, image_problem_text
from bot.i18n import render
from inference import errors

# The abstract families, which no engine raises as such, may fall back to the generic words.
FAMILIES = {errors.InferenceError, errors.InvalidRequest, errors.EngineUnavailable}


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _example(cls: type) -> errors.InferenceError:
    examples = {
        errors.TooManyImages: lambda: cls(5, 4),
        errors.TooFewImages: lambda: cls(1, 2),
        errors.QuestionTooLong: lambda: cls(1200, 1000),
        errors.TooManyTurns: lambda: cls(8),
        errors.UnreadableImage: lambda: cls(errors.ImageProblem.DAMAGED),
        errors.TooLarge: lambda: cls(30_000, 24_576),
        errors.ServerRefused: lambda: cls(errors.Refusal.TOO_LONG, "maximum context length is 4096"),
        errors.EngineDead: lambda: cls("CUDA error"),
        errors.RequestTimedOut: lambda: cls(180.0),
        errors.OutOfMemory: lambda: cls(while_answering=True),
    }
    if cls in examples:
        return examples[cls]()
    try:
        return cls()
    except TypeError:  # the errors whose only data is a detail for the log
        return cls("detail")


def _concrete() -> list[type]:
    import inference.errors as module

    return [
        cls
        for cls in _subclasses(errors.InferenceError)
        if cls not in FAMILIES and cls.__module__ == module.__name__
    ]


@pytest.mark.parametrize("cls", _concrete(), ids=lambda cls: cls.__name__)
def test_every_engine_error_has_its_own_words(cls):
    text = engine_error_text(_example(cls))
    assert str(text) and text != UNEXPECTED_ERROR_TEXT


def test_errors_carry_data_and_the_words_use_it():
    text = engine_error_text(errors.TooManyImages(count=6, limit=4))
    assert str(text) == "You gave me 6 images; I can compare up to 4 at once."
    assert "180 seconds" in str(engine_error_text(errors.RequestTimedOut(180.0)))


@pytest.mark.parametrize("problem", list(errors.ImageProblem))
def test_every_image_problem_is_explained(problem):
    error = errors.UnreadableImage(problem, width=9000, height=9000, limit=40_000_000, formats="PNG, JPEG")
    words = str(image_problem_text(error))
    assert words and words[0].islower()  # it ends "I can't use **name**: ..."
    if problem is errors.ImageProblem.TOO_MANY_PIXELS:
        assert "9000×9000" in words and "40,000,000" in words


def test_refusals_are_translated():
    text = engine_error_text(errors.ServerRefused(errors.Refusal.TOO_MANY_IMAGES))
    assert render(text, "da") != str(text)
