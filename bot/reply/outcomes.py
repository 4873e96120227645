"""How a job ends and what it leaves: its one final state (:class:`Outcome`), the owner's record of it
(:class:`JobRecord`), and what the buttons under its answer need (:class:`Controls`)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord


@dataclass(frozen=True)
class JobRecord:
    """What the owner's figures keep of one finished job (the metrics read this, not the reply)."""

    task: str | None  # describe, ocr, compare, alt_text
    outcome: Outcome | None  # None: the job ended without a final state
    started_at: float
    first_text_at: float | None
    finished_at: float | None
    discord_retries: int  # calls tried again after Discord was busy or failing
    previews_skipped: int  # live previews left out because the edit budget was spent


class Outcome(enum.StrEnum):
    ANSWER = "answer"
    REFUSAL = "refusal"
    FAILURE = "failure"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Controls:
    """What the buttons under an answer need: the job (to stop it), who asked, who can see it, and
    the language of their labels."""

    job_id: int
    asker_id: int
    private: bool
    locale: discord.Locale | None = None


# The buttons for a running answer (outcome None) or a finished one; None for no buttons.
ControlsRenderer = Callable[[Controls, "Outcome | None"], Any]
RUNNING = "running"
