"""The one error handler's mapping from failures to replies."""

from __future__ import annotations

import pytest
from discord import app_commands
from discord.ext import commands

from bot.engine_errors import BUSY_TEXT, MODEL_UNAVAILABLE_TEXT, OUT_OF_MEMORY_TEXT
from bot.errors import (
    UNEXPECTED_ERROR_TEXT,
    Denied,
    ImageRejected,
    NoImage,
    OnCooldown,
    explain,
)
from inference.errors import EngineBusy, EngineDead, OutOfMemory, TooManyImages


def test_unknown_prefix_commands_are_ignored():
    assert explain(commands.CommandNotFound("nope")) is None


def test_user_errors_are_shown_as_they_are():
    explanation = explain(NoImage("Attach an image."))
    assert explanation.text == "Attach an image."
    assert explanation.private and not explanation.unexpected


def test_denials_are_private():
    assert explain(Denied("Not here.")).private


def test_rejected_images_name_the_file():
    assert str(explain(ImageRejected("cat_*.png", "it is not an image")).text) == (
        "I can't use **cat\\_\\*.png**: it is not an image."
    )


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (OutOfMemory(while_answering=False), OUT_OF_MEMORY_TEXT[False]),
        (EngineBusy(), BUSY_TEXT),
        (EngineDead("CUDA error: an illegal memory access"), MODEL_UNAVAILABLE_TEXT),
        (TooManyImages(5, 4), "You gave me 5 images; I can compare up to 4 at once."),
    ],
)
def test_inference_errors_are_worded_for_people(error, words):
    explanation = explain(error)
    assert str(explanation.text) == str(words)
    assert "CUDA" not in str(explanation.text)  # the engine's detail stays in the log
    assert not explanation.unexpected


def test_wrapped_errors_are_unwrapped():
    wrapped = app_commands.CommandInvokeError.__new__(app_commands.CommandInvokeError)
    wrapped.original = OutOfMemory(while_answering=True)
    assert explain(wrapped).text == OUT_OF_MEMORY_TEXT[True]
    prefix_wrapped = commands.CommandInvokeError(NoImage("No image."))
    assert explain(prefix_wrapped).text == "No image."


def test_cooldowns_and_checks():
    cooldown = commands.CommandOnCooldown(commands.Cooldown(1, 10), 4.2, commands.BucketType.user)
    assert str(explain(cooldown).text) == str(OnCooldown(4.2))
    assert "owner" in explain(commands.NotOwner()).text
    assert explain(app_commands.NoPrivateMessage()).text == "This command only works in a server."


def test_anything_else_is_logged_and_reported_generically():
    explanation = explain(ZeroDivisionError("division by zero"))
    assert explanation.text == UNEXPECTED_ERROR_TEXT
    assert explanation.unexpected
