"""The bot's database: one SQLite file (``DATABASE_PATH``) for what must survive a restart.

:class:`Database` owns the connection (aiosqlite: SQLite on its own thread, awaited from the event
loop) and brings the schema up to date when it opens. Each schema change is one entry of
:data:`MIGRATIONS`, applied in order inside a transaction and recorded in ``schema_migrations``; a
file from an older version of the bot is upgraded, never rebuilt.

Opening fails with :class:`DatabaseUnavailable`, whose text is the one line the owner needs (a damaged
file, a file another program holds, a folder that cannot be written).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

IN_MEMORY = ":memory:"
VERSION_SQL = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
BUSY_TIMEOUT_S = 5.0  # how long a statement waits for a lock held by another connection

# Each entry: (version, what it does, SQL). Never edit a released entry; add a new one.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "answers the bot showed, so people can follow up on them",
        """
        CREATE TABLE answers (
            message_id   INTEGER PRIMARY KEY,  -- a message showing (part of) the answer
            main_id      INTEGER NOT NULL,     -- the answer's first message; its buttons live there
            channel_id   INTEGER,
            asker_id     INTEGER NOT NULL,
            task         TEXT    NOT NULL,     -- describe, ocr or compare
            private      INTEGER NOT NULL,     -- 1: an ephemeral answer only its asker sees
            markdown     INTEGER NOT NULL DEFAULT 0,
            sources      TEXT    NOT NULL,     -- JSON: where the images are on Discord
            turns        TEXT    NOT NULL,     -- JSON: every question and answer so far
            created_at   REAL    NOT NULL      -- Unix time
        );
        CREATE INDEX answers_by_main ON answers (main_id);
        CREATE INDEX answers_by_age ON answers (created_at);
        """,
    ),
    (
        2,
        "per-server settings chosen with /settings, their history, and alt-text opt-outs",
        """
        CREATE TABLE server_settings (
            guild_id     INTEGER NOT NULL,
            name         TEXT    NOT NULL,     -- e.g. cooldown_s, channels (see bot/server_settings.py)
            value        TEXT    NOT NULL,     -- JSON
            changed_by   INTEGER NOT NULL,     -- the member who chose it
            changed_at   REAL    NOT NULL,
            PRIMARY KEY (guild_id, name)
        );
        CREATE TABLE settings_changes (
            id           INTEGER PRIMARY KEY,
            guild_id     INTEGER NOT NULL,
            name         TEXT    NOT NULL,
            old_value    TEXT,                 -- JSON; NULL: the owner's default
            new_value    TEXT,                 -- JSON; NULL: back to the owner's default
            changed_by   INTEGER NOT NULL,
            changed_at   REAL    NOT NULL
        );
        CREATE INDEX settings_changes_by_guild ON settings_changes (guild_id, changed_at);
        CREATE TABLE alt_text_opt_outs (
            user_id      INTEGER PRIMARY KEY,  -- never describes this person's images by itself
            since        REAL    NOT NULL
        );
        """,
    ),
    (
        3,
        "the messages each answer came from, so deleting any of them forgets it; answers by asker",
        """
        CREATE TABLE answer_origins (
            message_id   INTEGER NOT NULL,     -- the message that asked, or one holding the answer's pictures
            main_id      INTEGER NOT NULL      -- the answer it belongs to (answers.main_id)
        );
        CREATE INDEX answer_origins_by_message ON answer_origins (message_id);
        CREATE INDEX answer_origins_by_main ON answer_origins (main_id);
        CREATE INDEX answers_by_asker ON answers (asker_id);
        CREATE INDEX settings_changes_by_member ON settings_changes (changed_by);
        """,
    ),
)


class DatabaseUnavailable(Exception):
    """The database cannot be used; ``str()`` is one line saying why and what to do."""


def folder_text(path: str, error: OSError) -> str:
    return (
        f"The folder for the database file {path} cannot be made ({error.strerror}). "
        "Set DATABASE_PATH to a file in a folder the bot may write."
    )


def folder_problem(path: str) -> str | None:
    """Why the folder of a database file that does not exist yet could not be made, in :meth:`Database.open`'s
    words; None when it could. Nothing is left behind: a trial folder is made in the nearest existing parent
    and removed again."""
    folder = Path(path).parent
    if folder.is_dir():
        if os.access(folder, os.W_OK | os.X_OK):
            return None
        return describe_failure(path, sqlite3.OperationalError("unable to open database file"))
    parent = next((p for p in folder.parents if p.exists()), Path("."))
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".phi3v-bot-check-"))
    except OSError as error:
        return folder_text(path, error)
    return None


def describe_failure(path: str, error: sqlite3.Error) -> str:
    text = str(error).lower()
    if "locked" in text or "busy" in text:
        return (
            f"The database file {path} is in use by another program (is another copy of the bot "
            "running?). Stop it, or set DATABASE_PATH to another file."
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            f"The database file {path} is damaged or is not a SQLite database. Restore a backup, or "
            "move the file away and the bot starts a new one (per-server settings and conversations "
            "in it are then lost)."
        )
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return (
            f"The database file {path} cannot be opened for writing ({error}). Check that its folder "
            "exists and the bot's user may write there, or set DATABASE_PATH."
        )
    return f"The database file {path} cannot be used: {error}."


class Database:
    """One SQLite connection, schema up to date. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, path: str, connection: aiosqlite.Connection) -> None:
        self.path = path
        self.connection = connection
        # One connection is shared by every coroutine: a transaction must not take in another's
        # statements, so each public call runs alone.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> Database:
        """Open (or create) the file and apply the migrations it lacks."""
        if path != IN_MEMORY:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise DatabaseUnavailable(folder_text(path, error)) from None
        connection: aiosqlite.Connection | None = None
        try:
            connection = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            database = cls(path, connection)
            await database._run("PRAGMA foreign_keys = ON")
            if path != IN_MEMORY:
                # Readers never wait for the writer; a crash cannot leave a half-written change.
                await database.fetch_all("PRAGMA journal_mode = WAL")
            async with database._lock:
                await database._migrate()
        except (sqlite3.Error, DatabaseUnavailable) as error:
            if connection is not None:
                await connection.close()
            if isinstance(error, DatabaseUnavailable):
                raise
            raise DatabaseUnavailable(describe_failure(path, error)) from None
        return database

    async def close(self) -> None:
        await self.connection.close()

    async def version(self) -> int:
        rows = await self.fetch_all(VERSION_SQL)
        return int(rows[0][0])

    async def _run(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        async with self.connection.execute(sql, tuple(parameters)) as cursor:
            return list(await cursor.fetchall())  # read to the end: no statement stays in progress

    async def _migrate(self) -> None:
        await self._run("BEGIN IMMEDIATE")  # one bot at a time upgrades the file
        try:
            await self._run(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = int((await self._run(VERSION_SQL))[0][0])
            newest = MIGRATIONS[-1][0]
            if current > newest:
                raise DatabaseUnavailable(
                    f"The database file {self.path} was written by a newer version of the bot "
                    f"(schema {current}, this one knows up to {newest}). Update the bot."
                )
            for version, description, sql in MIGRATIONS:
                if version <= current:
                    continue
                for statement in _statements(sql):
                    await self._run(statement)
                await self._run(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                    (version, description, time.time()),
                )
                log.info("Database %s: applied schema %d (%s)", self.path, version, description)
            await self._run("COMMIT")
        except BaseException:
            await self._run("ROLLBACK")
            raise

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> None:
        """One statement, in its own transaction (the connection autocommits)."""
        async with self._lock:
            await self._run(sql, parameters)

    async def execute_many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """The same statement for each row, all or nothing."""
        async with self._lock:
            await self._run("BEGIN")
            try:
                cursor = await self.connection.executemany(sql, [tuple(row) for row in rows])
                await cursor.close()
                await self._run("COMMIT")
            except BaseException:
                await self._run("ROLLBACK")
                raise

    async def transaction(self, statements: Iterable[tuple[str, Iterable[Any]]]) -> None:
        """Several statements, all or nothing."""
        async with self._lock:
            await self._run("BEGIN")
            try:
                for sql, parameters in statements:
                    await self._run(sql, parameters)
                await self._run("COMMIT")
            except BaseException:
                await self._run("ROLLBACK")
                raise

    async def fetch_all(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        async with self._lock:
            return await self._run(sql, parameters)


def _statements(script: str) -> list[str]:
    """The statements of a migration script (they hold no semicolons inside strings)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]
