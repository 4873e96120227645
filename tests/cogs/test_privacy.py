"""What the bot keeps, and how it forgets: deleted messages, old conversations, /privacy, the settings log,
and no SQL parameter in any log."""

from __future__ import annotations

import logging
import time

import pytest

from bot.__main__ import configure_logging
from bot.conversation import KEPT_DAYS, Answered, Conversations
from bot.database import Database
from bot.server_settings import KEPT_CHANGES
from cogs.privacy import forgotten_text
from inference import Task, Turn
from tests.conftest import bot_messages, image_bytes

PNG = ("a.png", image_bytes())


@pytest.fixture
def database_file(tmp_path):
    return str(tmp_path / "bot.sqlite3")


@pytest.fixture
async def simcord_bot(make_bot, database_file):
    bot = make_bot(database_path=database_file)
    yield bot
    await bot.close()


async def kept(world) -> int:
    rows = await world.env.bot.database.fetch_all("SELECT COUNT(DISTINCT main_id) FROM answers")
    return rows[0][0]


async def describe(world, member=None, **options):
    await (member or world.member).send(world.channel, "!describe", **options)
    return bot_messages(world.channel)[-1]


@pytest.mark.parametrize("deleted", ["asking", "answer", "picture"])
async def test_deleting_the_question_the_answer_or_the_picture_forgets_the_conversation(world, deleted):
    photo = await world.member.send(world.channel, "look", attachments=[PNG])
    answer = await describe(world, reply_to=photo)
    asking = [m for m in world.channel.history() if m.content == "!describe"][0]
    other = await describe(world, attachments=[("b.png", image_bytes())])  # a conversation of its own
    assert await kept(world) == 2
    message = {"asking": asking, "answer": answer, "picture": photo}[deleted]
    if deleted == "answer":
        await message.delete()
    else:
        await world.member.delete(message)
    await world.env.settle()
    assert await kept(world) == 1
    assert await world.env.bot.conversations.recall(other.id)  # the other stays


async def test_a_bulk_delete_forgets_every_conversation_in_it(world):
    photos = [await world.member.send(world.channel, "look", attachments=[PNG]) for _ in range(3)]
    for photo in photos:
        await describe(world, reply_to=photo)
    assert await kept(world) == 3
    world.env.backend.bulk_delete_messages(world.channel.id, [photo.id for photo in photos[:2]])
    await world.env.settle()
    assert await kept(world) == 1


async def store_old_answer(path: str, days_old: float) -> None:
    database = await Database.open(path)
    conversations = Conversations(database)
    await conversations.remember([1], Answered(Task.DESCRIBE, (), (Turn(None, "old"),), 7))
    await database.execute("UPDATE answers SET created_at = ?", (time.time() - days_old * 86400,))
    await database.close()


async def test_old_conversations_are_removed_at_start_and_every_hour(world, make_bot, database_file):
    await store_old_answer(database_file, KEPT_DAYS + 1)
    restarted = make_bot(database_path=database_file)
    await world.env.restart_bot(restarted)
    try:
        assert await kept(world) == 0  # gone at start-up, not after some number of answers
        await describe(world, attachments=[PNG])
        await restarted.database.execute(
            "UPDATE answers SET created_at = ?", (time.time() - KEPT_DAYS * 86400 - 60,)
        )
        await world.env.advance_time(3600 + 1)
        assert await kept(world) == 0  # and on the hour
    finally:
        await restarted.close()


async def test_a_member_sees_what_is_kept_and_erases_their_conversations(world):
    other = world.guild.add_member(world.env.create_user("bob"))
    await describe(world, attachments=[PNG])
    await describe(world, attachments=[PNG])
    await describe(world, member=other, attachments=[PNG])
    await world.member.slash(world.channel, "alttext optout")

    shown = (await world.member.slash(world.channel, "privacy show")).response
    assert shown.flags.ephemeral
    assert "2 conversation(s) you started" in shown.content
    assert "opted out of automatic alt text" in shown.content

    result = await world.member.slash(world.channel, "privacy forget")
    assert result.ephemeral and result.response.content == str(forgotten_text(2))
    assert await kept(world) == 1  # bob's stays
    shown = (await world.member.slash(world.channel, "privacy show")).response
    assert "No conversation of yours" in shown.content


async def test_the_settings_log_keeps_each_servers_latest_changes(world):
    settings = world.env.bot.server_settings
    for seconds in range(KEPT_CHANGES + 5):
        await settings.change(world.guild.id, "cooldown_s", float(seconds), by=world.member.id)
    await settings.change(world.guild.id + 1, "cooldown_s", 1.0, by=world.member.id)
    history = await settings.history(world.guild.id, limit=1000)
    assert len(history) == KEPT_CHANGES
    assert history[0][2] == str(float(KEPT_CHANGES + 4))  # the newest kept
    assert len(await settings.history(world.guild.id + 1)) == 1
    assert await settings.changes_by(world.member.id) == KEPT_CHANGES + 1


@pytest.fixture
def logger_levels():
    saved = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


async def test_no_sql_parameter_reaches_the_log_even_at_debug(tmp_path, caplog, logger_levels):
    configure_logging("DEBUG")  # as the bot's start configures it with LOG_LEVEL=DEBUG
    caplog.set_level(logging.DEBUG)
    database = await Database.open(str(tmp_path / "bot.sqlite3"))
    secret = "private OCR text 8d1f"
    await Conversations(database).remember([5], Answered(Task.OCR, (), (Turn(None, secret),), 1))
    await database.close()
    assert caplog.records  # the log was listening
    assert not any(secret in record.getMessage() for record in caplog.records)
