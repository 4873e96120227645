"""A bot run without Discord's Message Content intent (COMMAND_PREFIX blank), on an application that was not
granted it: it says plainly what it cannot see, instead of "no image"."""

from __future__ import annotations

import discord
import pytest

from bot.errors import Denied, NoImage
from bot.jobs import CANNOT_SEE_OTHERS_TEXT
from cogs.server_settings import ALT_TEXT_NEEDS_CONTENT_TEXT
from tests.cogs.test_alt_text import turn_on_alt_text
from tests.cogs.test_server_settings import admin_of, settings
from tests.conftest import acknowledge_errors, bot_messages, image_bytes

pytestmark = [
    pytest.mark.bot_settings(command_prefix=""),
    pytest.mark.simcord(approved_intents=discord.Intents.default()),  # Message Content not granted
]


def mention(world) -> str:
    return f"<@{world.env.bot.user.id}>"


async def test_the_bot_runs_without_the_intent(world):
    assert not world.env.bot.intents.message_content


async def test_a_mention_with_the_picture_attached_works(world, fake_engine):
    await world.member.send(
        world.channel, f"{mention(world)} describe", attachments=[("a.png", image_bytes())]
    )
    assert bot_messages(world.channel)[-1].content == fake_engine.default_answer


async def test_a_mention_replying_to_someone_elses_picture_says_what_to_do(world, fake_engine):
    other = world.guild.add_member(world.env.create_user("bob"))
    photo = await other.send(world.channel, "look at this", attachments=[("a.png", image_bytes())])
    await world.member.send(world.channel, f"{mention(world)} describe", reply_to=photo)
    [answer] = bot_messages(world.channel)
    assert answer.content == CANNOT_SEE_OTHERS_TEXT
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [NoImage]


async def test_the_right_click_menu_still_reads_someone_elses_picture(world, fake_engine):
    other = world.guild.add_member(world.env.create_user("bob"))
    photo = await other.send(world.channel, "look at this", attachments=[("a.png", image_bytes())])
    result = await world.member.context_menu(world.channel, "Describe image", photo)
    assert result.response.content == fake_engine.default_answer


async def test_alt_text_cannot_be_turned_on_and_says_why(world, fake_engine):
    result = await settings(admin_of(world), world, "alt-text add", channel=world.channel)
    assert result.ephemeral and result.response.content == ALT_TEXT_NEEDS_CONTENT_TEXT
    assert acknowledge_errors(world.env) == [Denied]
    await turn_on_alt_text(world)  # chosen while the bot still had the intent: nothing happens, quietly
    await world.member.send(world.channel, "look", attachments=[("a.png", image_bytes())])
    assert bot_messages(world.channel) == [] and fake_engine.requests == []
