"""Replies in the reader's language: private ones in the asker's Discord locale, public ones in the
server's; command names in every language Discord shows them in; the model's answer as it is."""

from __future__ import annotations

import discord
import pytest

from bot.i18n import render
from bot.jobs import NO_IMAGE_IN_COMMAND_TEXT
from bot.limits import OCR_DENIED_TEXT
from bot.reply import WORKING_TEXT
from cogs.answer_buttons import FOLLOW_UP_LABEL, MODAL_TITLE, STOP_LABEL
from tests.cogs.test_answer_buttons import labels
from tests.conftest import acknowledge_errors, bot_messages, image_bytes, reconfigure

LANGUAGES = ["vi", "da", "ro"]


@pytest.mark.parametrize("locale", LANGUAGES)
async def test_a_private_refusal_is_in_the_askers_language(world, fake_engine, interaction_payload, locale):
    mods = world.guild.create_role("Mods")
    reconfigure(world.env.bot, ocr_role_ids=frozenset({mods.id}))
    interaction_payload["locale"] = locale
    result = await world.member.slash(world.channel, "ocr", image=("a.png", image_bytes()))
    assert result.ephemeral
    assert result.response.content == render(OCR_DENIED_TEXT, locale) != OCR_DENIED_TEXT
    acknowledge_errors(world.env)


async def test_a_public_answer_speaks_the_servers_language_and_keeps_the_models_words(
    world, fake_engine, interaction_payload
):
    interaction_payload["locale"] = "ro"  # the asker's own
    interaction_payload["guild_locale"] = "da"  # the server's: everyone reads the public message
    fake_engine.hold(world.env)
    result = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    assert (
        result.response.content
        == render(WORKING_TEXT, "da")
        == "Kigger på det… \N{LEFT-POINTING MAGNIFYING GLASS}"
    )
    assert labels(result.response) == [render(STOP_LABEL, "da")]
    fake_engine.release()
    await world.env.settle()
    assert result.response.content == fake_engine.default_answer  # the model's answer is not translated
    assert labels(result.response)[0] == render(FOLLOW_UP_LABEL, "da")


async def test_the_follow_up_form_is_in_the_askers_language(world, fake_engine, interaction_payload):
    answer_message = await world.member.send(
        world.channel, "!describe", attachments=[("a.png", image_bytes())]
    )
    answer = bot_messages(world.channel)[-1]
    assert answer_message.id != answer.id
    interaction_payload["locale"] = "vi"
    shown = await world.member.click(answer, label=FOLLOW_UP_LABEL)  # labelled in the server's (English)
    assert shown.modal["title"] == render(MODAL_TITLE, "vi") == "Hỏi tiếp"


async def test_a_prefix_command_answers_in_the_servers_preferred_language(simcord_env, fake_engine):
    guild = simcord_env.create_guild("Server RO", preferred_locale="ro")
    channel = guild.create_text_channel("general")
    member = guild.add_member(simcord_env.create_user("ana"))
    await member.send(channel, "!describe")  # no image
    [refusal] = bot_messages(channel)
    assert refusal.content == render(NO_IMAGE_IN_COMMAND_TEXT, "ro")
    assert refusal.content.startswith("Atașează o imagine")
    acknowledge_errors(simcord_env)


async def test_commands_are_published_with_their_names_in_each_language(world):
    commands = {command.name: command for command in await world.env.bot.tree.fetch_commands()}
    describe = commands["describe"]
    assert describe.name_localizations[discord.Locale.vietnamese] == "mô-tả"
    assert describe.name_localizations[discord.Locale.danish] == "beskriv"
    assert describe.name_localizations[discord.Locale.romanian] == "descrie"
    assert describe.description_localizations[discord.Locale.danish].startswith("Beskriv et billede")
    assert describe.options[0].name_localizations[discord.Locale.danish] == "billede"
