"""The app installed by a person to their account: it works where the bot itself is not, privately."""

from __future__ import annotations

import discord

from cogs.describe import MENU_NAME
from tests.conftest import bot_messages, image_bytes


def user_install_only(payload):
    """As Discord says it for a server that did not add the bot: only the person installed the app."""
    user = payload.get("member", {}).get("user") or payload["user"]
    return {"1": user["id"]}


async def test_every_task_command_and_menu_may_be_installed_by_a_person(world):
    tree = world.env.bot.tree
    for command in [*tree.get_commands(), *tree.get_commands(type=discord.AppCommandType.message)]:
        if command.name in ("settings", "status"):
            continue  # a server's admins', and the owner's
        assert command.allowed_installs is not None and command.allowed_installs.user, command.name
        contexts = command.allowed_contexts
        assert contexts is not None and contexts.guild and contexts.dm_channel and contexts.private_channel


async def test_a_user_install_answers_privately_where_the_bot_is_not(world, fake_engine, interaction_payload):
    interaction_payload["authorizing_integration_owners"] = user_install_only
    result = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    assert result.ephemeral and result.response.content == fake_engine.default_answer

    photo = await world.member.send(world.channel, "", attachments=[("b.png", image_bytes((20, 10)))])
    result = await world.member.context_menu(world.channel, MENU_NAME, photo)
    assert result.ephemeral
    assert [image.size for image in fake_engine.requests[-1].images] == [(20, 10)]
    kept = await world.env.bot.conversations.recall(result.response.id)
    assert kept.private and kept.sources[0].message_id is None  # the bot cannot read that message again
    assert bot_messages(world.channel) == []  # nothing public where the bot was not invited


async def test_the_servers_own_install_answers_as_usual(world, fake_engine, interaction_payload):
    interaction_payload["authorizing_integration_owners"] = lambda payload: {
        "0": payload["guild_id"],
        **user_install_only(payload),
    }
    result = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    assert not result.ephemeral
