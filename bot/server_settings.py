"""Per-server settings: what each server's admins chose with ``/settings``, over the owner's defaults.

Stored in the database: ``server_settings`` holds one row per server and setting (a JSON value and
who chose it), ``settings_changes`` the latest :data:`KEPT_CHANGES` changes of each server with their old and
new values and who made them (older ones are dropped as new ones come, and at start-up). All servers' choices
are read into memory at start-up and kept up to date on each change, so answering a request never
waits for the database; a change is in memory only once the database has it.

The owner's ``.env`` stays in charge: its values are the defaults for a server that chose nothing,
``ALLOWED_GUILD_IDS`` / ``ALLOWED_CHANNEL_IDS`` still apply (a server can narrow them, never widen
them), a server's cooldown can only be longer than ``USER_COOLDOWN_S``, its jobs per person only
fewer than ``MAX_JOBS_PER_USER``, and ``MAX_IMAGES`` is the owner's alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from bot.database import Database
from bot.errors import UserFacingError
from bot.limits import AccessPolicy
from bot.settings import Settings
from bot.text import N_

log = logging.getLogger(__name__)

NOT_SAVED_TEXT = N_("I could not save that change, so nothing was changed. Please try again in a moment.")
ID_SETS = ("channel_ids", "ocr_role_ids", "alt_text_channel_ids")
KEPT_CHANGES = 100  # a server's latest changes kept in its settings log
TRIM_LOG_SQL = (
    "DELETE FROM settings_changes WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
    "(PARTITION BY guild_id ORDER BY id DESC) AS newer FROM settings_changes {where}) WHERE newer > ?)"
)


@dataclass(frozen=True)
class ServerChoices:
    """What one server chose; None everywhere is the owner's defaults."""

    channel_ids: frozenset[int] | None = None  # None: wherever the owner allows
    ocr_role_ids: frozenset[int] | None = None  # None: the owner's OCR_ROLE_IDS
    ocr_public: bool | None = None
    cooldown_s: float | None = None
    jobs_per_person: int | None = None
    alt_text_channel_ids: frozenset[int] | None = None  # None: no automatic alt text
    answer_language: str | None = None  # "asker": each asker's Discord language; None: English
    answer_threads: bool | None = None  # True: each public answer opens a thread for its follow-ups

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(ServerChoices))


@dataclass(frozen=True)
class ServerPolicy:
    """The rules in force in one server (or in DMs): the owner's settings with the server's choices."""

    access: AccessPolicy
    ocr_public: bool
    cooldown_s: float
    jobs_per_person: int
    alt_text_channel_ids: frozenset[int]
    answers_in_askers_language: bool = False  # descriptions and comparisons in the asker's language
    answer_threads: bool = False  # each public answer opens a thread; messages in it are follow-ups


ASKERS_LANGUAGE = "asker"


def server_policy(settings: Settings, access: AccessPolicy, choices: ServerChoices) -> ServerPolicy:
    """Merge a server's choices into the owner's rules; the owner's limits always win."""
    if choices.channel_ids is not None or choices.ocr_role_ids is not None:
        access = dataclasses.replace(
            access,
            server_channel_ids=choices.channel_ids,
            ocr_role_ids=access.ocr_role_ids if choices.ocr_role_ids is None else choices.ocr_role_ids,
        )
    return ServerPolicy(
        access=access,
        ocr_public=settings.ocr_public if choices.ocr_public is None else choices.ocr_public,
        cooldown_s=max(settings.user_cooldown_s, choices.cooldown_s or 0.0),
        jobs_per_person=min(
            settings.max_jobs_per_user, choices.jobs_per_person or settings.max_jobs_per_user
        ),
        alt_text_channel_ids=choices.alt_text_channel_ids or frozenset(),
        answers_in_askers_language=choices.answer_language == ASKERS_LANGUAGE,
        answer_threads=bool(choices.answer_threads),
    )


def _to_json(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, frozenset):
        value = sorted(value)
    return json.dumps(value)


def _from_json(name: str, text: str) -> Any:
    value = json.loads(text)
    return frozenset(int(item) for item in value) if name in ID_SETS else value


class ServerSettings:
    """Every server's choices, read from the database once and changed through :meth:`change`."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._choices: dict[int, ServerChoices] = {}

    async def load(self) -> None:
        await self.database.execute(TRIM_LOG_SQL.format(where=""), (KEPT_CHANGES,))
        rows = await self.database.fetch_all("SELECT guild_id, name, value FROM server_settings")
        known = set(ServerChoices.names())
        found: dict[int, dict[str, Any]] = {}
        for guild_id, name, value in rows:
            if name in known:  # a setting a newer bot wrote is left alone
                found.setdefault(guild_id, {})[name] = _from_json(name, value)
        self._choices = {guild_id: ServerChoices(**values) for guild_id, values in found.items()}

    def choices(self, guild_id: int | None) -> ServerChoices:
        return self._choices.get(guild_id, ServerChoices()) if guild_id is not None else ServerChoices()

    async def change(self, guild_id: int, name: str, value: Any, *, by: int) -> ServerChoices:
        """Set one setting (None: back to the owner's default), logged with who did it.

        All or nothing: if the database does not take it, :class:`UserFacingError` says so and the
        setting stays as it was.
        """
        if name not in ServerChoices.names():
            raise ValueError(f"unknown server setting {name!r}")
        before = self.choices(guild_id)
        old, new = _to_json(getattr(before, name)), _to_json(value)
        now = time.time()
        write = (
            ("DELETE FROM server_settings WHERE guild_id = ? AND name = ?", (guild_id, name))
            if new is None
            else (
                "INSERT OR REPLACE INTO server_settings (guild_id, name, value, changed_by, changed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (guild_id, name, new, by, now),
            )
        )
        history = (
            "INSERT INTO settings_changes (guild_id, name, old_value, new_value, changed_by, changed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, name, old, new, by, now),
        )
        trim = (TRIM_LOG_SQL.format(where="WHERE guild_id = ?"), (guild_id, KEPT_CHANGES))
        try:
            await self.database.transaction([write, history, trim])
        except sqlite3.Error:
            log.exception("Server %s: could not save %s", guild_id, name)
            raise UserFacingError(NOT_SAVED_TEXT) from None
        after = dataclasses.replace(before, **{name: value})
        self._choices[guild_id] = after
        log.info("Server %s: member %s changed %s from %s to %s", guild_id, by, name, old, new)
        return after

    async def reset(self, guild_id: int, *, by: int) -> None:
        """Every setting of a server back to the owner's defaults."""
        for name in ServerChoices.names():
            if getattr(self.choices(guild_id), name) is not None:
                await self.change(guild_id, name, None, by=by)

    async def changes_by(self, user_id: int) -> int:
        """How many changes in the servers' settings logs this member made."""
        rows = await self.database.fetch_all(
            "SELECT COUNT(*) FROM settings_changes WHERE changed_by = ?", (user_id,)
        )
        return int(rows[0][0])

    async def history(
        self, guild_id: int, limit: int = 10
    ) -> list[tuple[str, str | None, str | None, int, float]]:
        """The latest changes of a server: (name, old JSON, new JSON, member id, Unix time), newest first."""
        return await self.database.fetch_all(
            "SELECT name, old_value, new_value, changed_by, changed_at FROM settings_changes "
            "WHERE guild_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
