"""What people see when things go wrong, through simcord: shutdown, half answers, Discord's failures,
the 15-minute interaction window, a dead model."""

from __future__ import annotations

import discord
import pytest

from bot.app import MODEL_UNAVAILABLE_STATUS
from bot.engine_errors import SHUTTING_DOWN_TEXT
from bot.reply import HANDED_OVER_TEXT, INTERACTION_TOKEN_S, queue_text
from inference import RequestTimedOut
from tests.conftest import acknowledge_errors, bot_messages, image_bytes
from tests.fakes import Interrupted

PNG = ("a.png", image_bytes())
LONG_ANSWER = "\n".join(f"Detail {i}: " + "x" * 80 for i in range(40))  # ~3,700 characters: two messages


def patched_contents(env) -> list[str]:
    return [
        entry.json.get("content")
        for entry in env.http_requests
        if entry.method == "PATCH" and isinstance(entry.json, dict) and "content" in entry.json
    ]


async def test_shutdown_with_six_people_waiting_leaves_each_on_the_stop_message(world, fake_engine):
    fake_engine.places_in_line = [3]
    fake_engine.hold(world.env)
    members = [world.member] + [world.guild.add_member(world.env.create_user(f"user{i}")) for i in range(5)]
    results = []
    for index, member in enumerate(members):
        if index % 2:
            await member.send(world.channel, "!describe", attachments=[PNG])
        else:
            results.append(await member.slash(world.channel, "describe", image=PNG))

    await world.env.bot.close()
    await world.env.settle()

    shown = [message.content for message in bot_messages(world.channel)]
    assert shown == [SHUTTING_DOWN_TEXT] * 6
    assert not any("in line" in content for content in shown)
    # nothing was edited after the stop messages went out
    edits = patched_contents(world.env)
    last_stop = max(i for i, content in enumerate(edits) if content == SHUTTING_DOWN_TEXT)
    assert all(content == SHUTTING_DOWN_TEXT for content in edits[last_stop - 5 : last_stop + 1])
    assert str(queue_text(3)) in edits  # they had been shown their places
    acknowledge_errors(world.env)


@pytest.mark.parametrize("command", ["slash", "prefix"])
async def test_a_failure_after_the_answer_spilled_leaves_no_half_answer(world, fake_engine, command):
    fake_engine.answer_next(Interrupted(LONG_ANSWER, RequestTimedOut(60)))
    fake_engine.piece_size = 1_000
    fake_engine.hold(world.env, after_pieces=3)  # 3,000 characters: two messages showing
    if command == "slash":
        await world.member.slash(world.channel, "describe", image=PNG)
    else:
        await world.member.send(world.channel, "!describe", attachments=[PNG])
    await world.env.advance_time(1.5)
    fake_engine.release()
    await world.env.settle()

    shown = [message.content for message in bot_messages(world.channel)]
    assert shown == ["The answer took longer than 60 seconds and was stopped."]
    deleted = [entry for entry in world.env.http_requests if entry.method == "DELETE"]
    assert len(deleted) == 1  # the continuation that showed the half answer
    assert acknowledge_errors(world.env) == [RequestTimedOut]


async def test_deleting_the_answer_message_stops_the_job_quietly(world, fake_engine):
    fake_engine.hold(world.env, after_pieces=1)
    await world.member.send(world.channel, "!describe", attachments=[PNG])
    [answer] = bot_messages(world.channel)
    await answer.delete()  # a moderator removes it mid-answer
    fake_engine.release()
    await world.env.settle()

    assert bot_messages(world.channel) == []
    assert fake_engine.closed_streams == 1
    assert world.env.bot.limiter.active_jobs(world.member.id) == 0
    assert world.env.errors == []  # nothing unexpected, nothing for the error handler
    await world.member.send(world.channel, "!describe", attachments=[PNG])
    assert bot_messages(world.channel)[-1].content == fake_engine.default_answer


async def test_a_permission_removed_mid_answer_ends_that_answer_only(world, fake_engine):
    fake_engine.piece_size = 5
    fake_engine.hold(world.env, after_pieces=2)
    await world.member.send(world.channel, "!describe", attachments=[PNG])
    path = f"/channels/{world.channel.id}/messages/*"
    world.env.inject_error("PATCH", path, status=403, code=50013, message="Missing Permissions", times=None)
    await world.env.advance_time(1.5)
    fake_engine.release()
    await world.env.settle()

    assert fake_engine.closed_streams == 1
    assert world.env.errors == []
    assert world.env.bot.limiter.active_jobs(world.member.id) == 0
    assert bot_messages(world.channel) == []  # the half answer it could no longer edit was deleted
    other = world.guild.create_text_channel("other")
    await world.member.send(other, "!describe", attachments=[PNG])
    assert bot_messages(other)[-1].content == fake_engine.default_answer


async def test_a_rate_limited_final_edit_is_retried(world, fake_engine):
    world.env.inject_error(
        "PATCH", "/channels/*/messages/*", status=429, message="You are being rate limited."
    )
    await world.member.send(world.channel, "!describe", attachments=[PNG])
    await world.env.advance_time(2)  # the back-off before the second try
    await world.env.settle()

    assert bot_messages(world.channel)[-1].content == fake_engine.default_answer
    assert patched_contents(world.env) == [fake_engine.default_answer] * 2


# ---------------------------------------------------------------- the 15-minute interaction window


@pytest.mark.bot_settings(request_timeout_s=3600)
async def test_a_private_answer_gets_at_most_the_time_discord_leaves_to_show_it(world, fake_engine):
    await world.member.slash(world.channel, "ocr", image=PNG)
    [request] = fake_engine.requests
    assert request.timeout_s is not None and request.timeout_s <= INTERACTION_TOKEN_S - 60


async def test_a_public_answer_outliving_its_token_continues_as_a_channel_message(world, fake_engine):
    fake_engine.hold(world.env)
    result = await world.member.slash(world.channel, "describe", image=PNG)
    await world.env.advance_time(INTERACTION_TOKEN_S - 30)  # past the hand-over point
    await world.env.settle()
    assert result.response.content == HANDED_OVER_TEXT

    await world.env.advance_time(60)  # the token has expired now
    fake_engine.release()
    await world.env.settle()

    messages = bot_messages(world.channel)
    assert [message.content for message in messages][-1] == fake_engine.default_answer
    assert messages[-1].interaction_metadata is None  # an ordinary message, not the expired response
    assert result.response.content == HANDED_OVER_TEXT


# ---------------------------------------------------------------- a dead model


async def test_a_dead_model_shows_in_the_bots_status(world, fake_engine, monkeypatch):
    bot = world.env.bot
    changes = []

    async def change_presence(**options) -> None:
        changes.append(options)

    monkeypatch.setattr(bot, "change_presence", change_presence)
    fake_engine.on_dead("3 model steps failed in a row")
    await world.env.settle()

    [change] = changes
    assert change["status"] is discord.Status.dnd
    assert change["activity"].name == MODEL_UNAVAILABLE_STATUS
