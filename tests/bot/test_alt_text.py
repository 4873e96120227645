"""How alt text reads, and how often a channel gets it."""

from __future__ import annotations

import pytest

from bot.alt_text import MAX_ALT_TEXT_CHARS, ChannelRate, alt_text_message, tidy_alt_text


@pytest.mark.parametrize(
    "written",
    [
        "Image of a red bicycle leaning on a wall.",
        "This picture shows a red bicycle leaning on a wall.",
        "A photo of a red bicycle leaning on a wall.",
        "The screenshot showing a red bicycle leaning on a wall.",
        "  a red bicycle leaning\n on a wall.",
    ],
)
def test_alt_text_leads_with_what_matters(written):
    assert tidy_alt_text(written) == "A red bicycle leaning on a wall."


def test_alt_text_is_one_or_two_sentences_and_short():
    assert tidy_alt_text("A cat. On a sofa. Sleeping. Grey.") == "A cat. On a sofa."
    long = tidy_alt_text("word " * 200)
    assert len(long) <= MAX_ALT_TEXT_CHARS and long.endswith("…")
    assert tidy_alt_text("An imageboard post about cats.") == "An imageboard post about cats."  # not filler


def test_the_message_numbers_several_images_and_says_it_is_machine_written():
    assert alt_text_message(["A cat."]).startswith("**Alt text:** A cat.\n-# Alt text written by a machine")
    assert alt_text_message(["A cat.", "A dog."]).splitlines()[:2] == [
        "**Image 1:** A cat.",
        "**Image 2:** A dog.",
    ]


def test_a_channel_gets_a_limited_number_per_minute_a_sliding_window():
    now = [0.0]
    rate = ChannelRate(per_minute=3, clock=lambda: now[0])
    assert rate.take(1, 2) == 2
    assert rate.take(1, 2) == 1  # one left in this minute
    assert rate.take(2, 3) == 3  # another channel has its own
    now[0] = 59.0
    assert rate.take(1, 1) == 0
    now[0] = 61.0
    assert rate.take(1, 5) == 3


async def test_an_opt_out_made_elsewhere_holds_at_once():
    """Another process of a sharded bot writes the same file: the choice is read from it each time."""
    from bot.alt_text import OptOuts
    from bot.database import Database

    database = await Database.open(":memory:")
    try:
        here, elsewhere = OptOuts(database), OptOuts(database)
        assert not await here.contains(7)
        await elsewhere.set(7, True)
        assert await here.contains(7)
        await elsewhere.set(7, False)
        assert not await here.contains(7)
    finally:
        await database.close()
