"""Automatic alt text: which images need it, how often a channel gets it, and how it reads.

In the channels a server's admins chose (``/settings alt-text add``), an image posted without a
description gets a short reply written for people who cannot see it. This module holds the rules,
with no Discord calls: :func:`images_needing_alt_text`, :class:`ChannelRate`, :func:`tidy_alt_text`,
:func:`alt_text_message`, and the opt-outs (:class:`OptOuts`, kept in the database).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Sequence

import discord

from bot.database import Database
from bot.errors import UserFacingError
from bot.gather import looks_like_image
from bot.i18n import render
from bot.text import N_, T, Text

ALT_TEXT_TOKENS = 96  # one or two sentences
MAX_ALT_TEXT_CHARS = 300
PER_CHANNEL_PER_MINUTE = 6  # images described per channel and minute; more are skipped
MACHINE_WRITTEN = N_(
    "-# Alt text written by a machine (Phi-3-vision); it can be wrong. Opt out: `/alttext optout`"
)
OPT_OUT_NOT_SAVED_TEXT = N_("I could not save that, so nothing changed. Please try again in a moment.")

# Openings that tell a blind reader nothing ("Image of", "This picture shows", ...).
_FILLER = re.compile(
    r"^\s*(?:(?:this|the|an?)\s+)?(?:image|picture|photo(?:graph)?|screenshot)\s+"
    r"(?:of|shows?|showing|depicts?|depicting|features?|featuring|contains?|containing)\s+",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def images_needing_alt_text(attachments: Sequence[discord.Attachment]) -> list[discord.Attachment]:
    """Image attachments that have no description (alt text) of their own."""
    return [a for a in attachments if looks_like_image(a) and not (a.description or "").strip()]


def tidy_alt_text(text: str) -> str:
    """One or two sentences, no "image of", at most :data:`MAX_ALT_TEXT_CHARS` characters."""
    text = " ".join(text.split())
    text = _FILLER.sub("", text, count=1)
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    text = " ".join(sentences[:2])
    if len(text) > MAX_ALT_TEXT_CHARS:
        cut = text.rfind(" ", 0, MAX_ALT_TEXT_CHARS - 1)
        text = text[: cut if cut > 0 else MAX_ALT_TEXT_CHARS - 1].rstrip(",;:") + "…"
    return text[:1].upper() + text[1:]


def alt_text_message(descriptions: Sequence[str], locale: discord.Locale | str | None = None) -> str:
    """The reply: each image's alt text (numbered when there are several), marked machine-written.

    The labels are in ``locale`` (the server's); the descriptions are the model's, as written.
    """
    lines: list[str | Text]
    if len(descriptions) == 1:
        lines = [T("**Alt text:** {text}", text=descriptions[0])]
    else:
        lines = [
            T("**Image {number}:** {text}", number=number, text=text)
            for number, text in enumerate(descriptions, start=1)
        ]
    return "\n".join(render(line, locale) for line in [*lines, MACHINE_WRITTEN])


class ChannelRate:
    """At most ``per_minute`` images described per channel in any minute (a sliding window)."""

    def __init__(self, per_minute: int = PER_CHANNEL_PER_MINUTE, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._recent: dict[int, list[float]] = {}

    def take(self, channel_id: int, count: int) -> int:
        """How many of ``count`` images may be described now (they are counted)."""
        now = self.clock()
        recent = [t for t in self._recent.get(channel_id, []) if now - t < 60.0]
        allowed = max(0, min(count, self.per_minute - len(recent)))
        self._recent[channel_id] = recent + [now] * allowed
        if len(self._recent) > 10_000:  # forget quiet channels now and then
            self._recent = {c: times for c, times in self._recent.items() if times and now - times[-1] < 60}
        return allowed


class OptOuts:
    """People who do not want the bot to describe their images by itself (everywhere).

    Read from the database each time (a cheap lookup, for images that would get alt text): a
    person's choice holds at once in every process of a sharded bot, not only where it was made.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    async def contains(self, user_id: int) -> bool:
        rows = await self.database.fetch_all("SELECT 1 FROM alt_text_opt_outs WHERE user_id = ?", (user_id,))
        return bool(rows)

    async def set(self, user_id: int, opted_out: bool) -> None:
        try:
            if opted_out:
                await self.database.execute(
                    "INSERT OR REPLACE INTO alt_text_opt_outs (user_id, since) VALUES (?, ?)",
                    (user_id, time.time()),
                )
            else:
                await self.database.execute("DELETE FROM alt_text_opt_outs WHERE user_id = ?", (user_id,))
        except sqlite3.Error:
            raise UserFacingError(OPT_OUT_NOT_SAVED_TEXT) from None
