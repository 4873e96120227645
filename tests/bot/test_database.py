"""The database file: created and upgraded in place, and one clear line when it cannot be used."""

from __future__ import annotations

import sqlite3

import pytest

import bot.__main__ as entry
from bot import database as database_module
from bot.database import MIGRATIONS, Database, DatabaseUnavailable
from tests.conftest import make_settings
from tests.fakes import FakeEngine


async def test_a_new_file_gets_every_migration_once(tmp_path):
    path = str(tmp_path / "nested" / "folder" / "bot.sqlite3")  # folders are made
    database = await Database.open(path)
    assert await database.version() == MIGRATIONS[-1][0]
    await database.execute("INSERT INTO answers VALUES (1, 1, 2, 3, 'describe', 0, 0, '[]', '[]', 0)")
    await database.close()

    reopened = await Database.open(path)  # as after a restart: nothing re-applied, nothing lost
    try:
        assert await reopened.fetch_all("SELECT COUNT(*) FROM schema_migrations") == [(len(MIGRATIONS),)]
        assert await reopened.fetch_all("SELECT message_id, task FROM answers") == [(1, "describe")]
    finally:
        await reopened.close()


async def test_a_damaged_file_is_one_clear_line(tmp_path):
    path = tmp_path / "bot.sqlite3"
    path.write_bytes(b"this is not a database " * 200)
    with pytest.raises(DatabaseUnavailable, match="damaged or is not a SQLite database") as raised:
        await Database.open(str(path))
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)


async def test_a_file_another_program_holds_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "bot.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseUnavailable, match="in use by another program"):
            await Database.open(str(path))
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_file_from_a_newer_bot_is_refused_not_damaged(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    database = await Database.open(path)
    await database.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    await database.close()
    with pytest.raises(DatabaseUnavailable, match="newer version of the bot"):
        await Database.open(path)


async def test_a_folder_that_cannot_be_made_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DatabaseUnavailable, match="Set DATABASE_PATH"):
        await Database.open(str(blocker / "bot.sqlite3"))


async def test_a_failed_write_of_a_conversation_is_logged_and_nothing_else_breaks(caplog):
    from bot.conversation import Answered, Conversations
    from inference import Task, Turn

    database = await Database.open(":memory:")
    await database.execute("DROP TABLE answers")  # every write now fails
    conversations = Conversations(database)
    await conversations.remember([1], Answered(Task.DESCRIBE, (), (Turn(None, "x"),), 1))
    assert "Could not keep an answer" in caplog.text
    await database.close()


def test_the_bot_stops_with_one_line_when_its_database_is_damaged(capsys, monkeypatch, tmp_path):
    path = tmp_path / "bot.sqlite3"
    path.write_bytes(b"garbage" * 500)

    def fake_create_bot(settings):
        from bot.app import create_bot

        return create_bot(
            make_settings(discord_token=settings.discord_token, database_path=str(path)), FakeEngine()
        )

    async def start_up(bot, token):  # what setup_hook does first, without connecting to Discord
        await Database.open(bot.settings.database_path)

    monkeypatch.setattr(entry, "create_bot", fake_create_bot)
    monkeypatch.setattr(entry, "run", start_up)
    monkeypatch.setattr(entry, "configure_logging", lambda level: None)
    assert entry.main({"DISCORD_TOKEN": "token"}) == entry.EXIT_STARTUP
    err = capsys.readouterr().err.strip()
    assert "damaged" in err and "\n" not in err and "Traceback" not in err
