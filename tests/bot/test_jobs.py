"""The shared request pipeline through the real bot: permissions, limits, cooldowns, DMs."""

from __future__ import annotations

import re

import pytest

from bot.errors import Denied, OnCooldown, TooManyJobs, explain
from bot.images import ImageSource
from bot.jobs import choose_images, clean_question
from bot.limits import DM_DENIED_TEXT, GUILD_DENIED_TEXT
from bot.reply import Outcome
from inference import Task
from inference.errors import QuestionTooLong
from inference.prompts import MAX_QUESTION_CHARS
from tests.conftest import acknowledge_errors, bot_messages, image_bytes, reconfigure

PNG = ("a.png", image_bytes())


# ---------------------------------------------------------------- pure helpers


def test_questions_are_trimmed_and_blank_means_none():
    assert clean_question("  why?  ") == "why?"
    assert clean_question("   ") is None
    assert clean_question(None) is None
    with pytest.raises(QuestionTooLong) as refused:
        clean_question("x" * (MAX_QUESTION_CHARS + 1))
    assert explain(refused.value).outcome is Outcome.REFUSAL


def test_describe_and_ocr_look_at_the_first_image_only():
    sources = [
        ImageSource(f"{i}.png", f"https://cdn.discordapp.com/attachments/1/{i}/x.png") for i in range(3)
    ]
    assert choose_images(sources, Task.DESCRIBE, max_images=4, no_image_text="none") == (sources[0],)
    assert choose_images(sources, Task.COMPARE, max_images=4, no_image_text="none") == tuple(sources)


# ---------------------------------------------------------------- where the bot answers


async def test_servers_outside_the_allow_list_are_refused(world, fake_engine):
    reconfigure(world.env.bot, allowed_guild_ids=frozenset({world.guild.id + 1}))

    result = await world.member.slash(world.channel, "describe", image=PNG)

    assert result.ephemeral
    assert result.response.content == GUILD_DENIED_TEXT
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [Denied]


async def test_channels_outside_the_allow_list_are_refused_with_the_allowed_ones_named(world, fake_engine):
    bots = world.guild.create_text_channel("bot-commands")
    reconfigure(world.env.bot, allowed_channel_ids=frozenset({bots.id}))

    refused = await world.member.slash(world.channel, "describe", image=PNG)
    answered = await world.member.slash(bots, "describe", image=PNG)
    await world.member.send(world.channel, "!describe", attachments=[PNG])

    assert refused.ephemeral
    assert refused.response.content == f"I don't answer in this channel. Try <#{bots.id}>."
    assert answered.response.content == fake_engine.default_answer
    assert bot_messages(world.channel)[-1].content == refused.response.content
    assert acknowledge_errors(world.env) == [Denied, Denied]


async def test_direct_messages_work_by_default(simcord_env, fake_engine):
    simcord_env.create_guild().add_member(user := simcord_env.create_user("bob"))

    result = await user.slash("describe", image=PNG)

    assert result.response.content == fake_engine.default_answer


@pytest.mark.bot_settings(allow_dms=False)
async def test_direct_messages_can_be_turned_off(simcord_env, fake_engine):
    simcord_env.create_guild().add_member(user := simcord_env.create_user("bob"))

    result = await user.slash("describe", image=PNG)
    await user.send_dm("!describe")

    assert result.ephemeral and result.response.content == DM_DENIED_TEXT
    assert user.dm_channel.last_message.content == DM_DENIED_TEXT
    assert fake_engine.requests == []
    assert acknowledge_errors(simcord_env) == [Denied, Denied]


# ---------------------------------------------------------------- how often


@pytest.mark.bot_settings(user_cooldown_s=30)
async def test_cooldown_between_requests_then_allowed_again(world, fake_engine):
    first = await world.member.slash(world.channel, "describe", image=PNG)
    too_soon = await world.member.slash(world.channel, "describe", image=PNG)
    await world.env.advance_time(30)
    later = await world.member.slash(world.channel, "describe", image=PNG)

    assert first.response.content == fake_engine.default_answer
    assert too_soon.ephemeral
    assert re.fullmatch(r"You're going a bit fast: try again in 30 s\.", too_soon.response.content)
    assert later.response.content == fake_engine.default_answer
    assert len(fake_engine.requests) == 2
    assert acknowledge_errors(world.env) == [OnCooldown]


@pytest.mark.bot_settings(user_cooldown_s=30)
async def test_cooldowns_are_per_user(world, fake_engine):
    bob = world.guild.add_member(world.env.create_user("bob"))

    await world.member.slash(world.channel, "describe", image=PNG)
    result = await bob.slash(world.channel, "describe", image=PNG)

    assert result.response.content == fake_engine.default_answer


@pytest.mark.bot_settings(max_jobs_per_user=1)
async def test_one_person_cannot_queue_more_than_their_share(world, fake_engine):
    fake_engine.hold(world.env)
    waiting = await world.member.slash(world.channel, "describe", image=PNG)
    refused = await world.member.slash(world.channel, "describe", image=PNG)
    bob = world.guild.add_member(world.env.create_user("bob"))
    bobs = await bob.slash(world.channel, "describe", image=PNG)

    assert refused.ephemeral
    assert refused.response.content == "You already have a request in progress; wait for it to finish."
    assert world.env.bot.limiter.active_jobs(world.member.id) == 1

    fake_engine.release()
    await world.env.settle()

    assert waiting.response.content == fake_engine.default_answer
    assert bobs.response.content == fake_engine.default_answer
    assert world.env.bot.limiter.active_jobs(world.member.id) == 0
    again = await world.member.slash(world.channel, "describe", image=PNG)
    assert again.response.content == fake_engine.default_answer
    assert acknowledge_errors(world.env) == [TooManyJobs]
