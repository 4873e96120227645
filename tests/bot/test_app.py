"""Wiring of the bot: engine lifecycle, extensions, app command sync, intents, the owner's !sync."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import discord
import pytest
import simcord
from aiohttp.test_utils import TestServer
from discord.ext import commands

import inference
from bot.app import EXTENSIONS, ShardedVisionBot, VisionBot, create_bot
from bot.settings import Settings
from inference import ModelNotFound
from inference.remote import RemoteEngine
from tests.conftest import acknowledge_errors, bot_messages, image_bytes, make_settings
from tests.fakes import FakeEngine, SimcordCdnFetcher
from tests.inference.test_remote import ANSWER, FakeVllm

ROOT = Path(__file__).resolve().parents[2]
APP_COMMANDS = (
    "describe",
    "ocr",
    "compare",
    "status",
    "alttext optin",
    "alttext optout",
    "privacy show",
    "privacy forget",
)  # anyone sees
ADMIN_COMMANDS = ("settings",)  # Manage Server only
MENUS = ("Describe image", "Extract text", "Read as Markdown", "Compare images")


class RecordingLocalEngine(FakeEngine):
    configs: ClassVar[list[inference.EngineConfig]] = []

    def __init__(self, config: inference.EngineConfig) -> None:
        super().__init__()
        self.configs.append(config)


def test_default_bot_builds_a_local_engine_from_the_settings(monkeypatch):
    monkeypatch.setattr(inference, "LocalEngine", RecordingLocalEngine, raising=False)
    settings = Settings(model_id="some/model", quantization="4bit", num_crops=8)

    bot = create_bot(settings)

    assert isinstance(bot.engine, RecordingLocalEngine)
    assert RecordingLocalEngine.configs[-1] == settings.engine_config()
    assert bot.settings is settings


def test_create_bot_without_arguments_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "LocalEngine", RecordingLocalEngine, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("MAX_IMAGES", "3")
    monkeypatch.setenv("COMMAND_PREFIX", "?")

    bot = create_bot()

    assert bot.settings.max_images == 3
    assert RecordingLocalEngine.configs[-1].max_images == 3


def test_remote_backend_builds_a_remote_engine_from_the_settings(monkeypatch):
    def no_local_engine(config):
        raise AssertionError("BACKEND=remote must not build a LocalEngine")

    monkeypatch.setattr(inference, "LocalEngine", no_local_engine, raising=False)
    settings = Settings(backend="remote", remote_url="http://10.0.0.5:8000/v1", remote_max_concurrent=4)

    bot = create_bot(settings)

    assert isinstance(bot.engine, RemoteEngine)
    assert bot.engine.config == settings.remote_config()
    assert not bot.engine.ready  # nothing is contacted before setup_hook


async def test_a_remote_backend_answers_through_the_model_server():
    model_server = FakeVllm()
    server = TestServer(model_server.app(), host="127.0.0.1", shutdown_timeout=0.1)
    await server.start_server()
    try:
        settings = make_settings(backend="remote", remote_url=str(server.make_url("/v1")))
        bot = create_bot(settings, fetcher=SimcordCdnFetcher(lambda: bot.http))
        async with simcord.run(bot) as env:
            channel = env.create_guild().create_text_channel("general")
            member = env.guild.add_member(env.create_user("alice"))
            result = await member.slash(channel, "describe", image=("a.png", image_bytes()))
        await bot.close()
    finally:
        await server.close()

    assert result.response.content == "".join(ANSWER).strip()
    [body] = model_server.bodies
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert not bot.engine.ready  # stopped with the bot


def test_a_remote_bot_never_imports_torch():
    code = (
        "import sys; from bot.app import create_bot; from bot.settings import Settings; "
        "create_bot(Settings(backend='remote', remote_url='http://127.0.0.1:8000/v1')); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize(
    ("count", "ids", "expected_count", "expected_ids"),
    [(4, (0, 1), 4, [0, 1]), (2, (), 2, None), ("auto", (), None, None)],
)
def test_sharding_builds_an_auto_sharded_bot(fake_engine, count, ids, expected_count, expected_ids):
    bot = create_bot(Settings(shard_count=count, shard_ids=ids), fake_engine)

    assert isinstance(bot, ShardedVisionBot)
    assert isinstance(bot, commands.AutoShardedBot) and isinstance(bot, VisionBot)
    assert bot.shard_count == expected_count
    assert bot.shard_ids == expected_ids


def test_without_sharding_the_bot_is_a_plain_bot(fake_engine):
    bot = create_bot(Settings(), fake_engine)

    assert type(bot) is VisionBot
    assert not isinstance(bot, commands.AutoShardedBot)
    assert bot.shard_count is None


@pytest.mark.parametrize(
    ("count", "logged"),
    [
        (2, "2 shards in total; this process runs all of them"),
        ("auto", "as many shards as Discord recommends"),
    ],
)
async def test_a_sharded_bot_answers_and_logs_its_shards(make_bot, fake_engine, caplog, count, logged):
    caplog.set_level(logging.INFO, logger="bot.app")
    bot = make_bot(shard_count=count)
    async with simcord.run(bot, shard_count=2) as env:  # for "auto", Discord "recommends" 2
        channel = env.create_guild().create_text_channel("general")
        member = env.guild.add_member(env.create_user("alice"))
        result = await member.slash(channel, "describe", image=("a.png", image_bytes()))
    await bot.close()

    assert result.response.content == fake_engine.default_answer
    assert f"Sharded: {logged}" in caplog.text
    assert "Shards ready" in caplog.text


@pytest.mark.parametrize(("prefix", "message_content"), [("!", True), ("", False)])
def test_message_content_intent_only_for_a_text_prefix(prefix, message_content, fake_engine):
    bot = create_bot(Settings(command_prefix=prefix), fake_engine)
    assert bot.intents.message_content is message_content


async def test_setup_loads_the_extensions_and_syncs_commands_globally(world, fake_engine):
    bot = world.env.bot

    assert fake_engine.started
    assert set(bot.extensions) == set(EXTENSIONS)
    assert set(world.member.available_commands(world.channel)) == set(APP_COMMANDS)
    roots = {name.split()[0] for name in (*APP_COMMANDS, *ADMIN_COMMANDS)}
    assert {command.name for command in bot.tree.get_commands()} == {*roots, *MENUS}


async def test_close_stops_the_engine_and_the_session(make_bot, fake_engine):
    bot = make_bot()
    async with simcord.run(bot):
        assert fake_engine.started and not fake_engine.stopped
        session = bot.session
    await bot.close()

    assert fake_engine.stopped
    assert session.closed


async def test_close_stops_the_engine_before_disconnecting(make_bot, fake_engine):
    """Requests cut short by shutdown must still be able to tell their users, so the engine stops first."""
    bot = make_bot()
    seen_while_stopping = []
    original_stop = fake_engine.stop

    async def stop() -> None:
        seen_while_stopping.append(bot.is_closed())
        await original_stop()

    fake_engine.stop = stop
    async with simcord.run(bot):
        pass
    await bot.close()
    assert seen_while_stopping == [False]


async def test_an_engine_managed_by_the_caller_is_left_alone(make_bot, fake_engine):
    bot = make_bot(manage_engine=False)
    async with simcord.run(bot) as env:
        channel = env.create_guild().create_text_channel("general")
        member = env.guild.add_member(env.create_user("alice"))
        result = await member.slash(channel, "describe", image=("a.png", image_bytes()))
    await bot.close()

    assert result.response.content == fake_engine.default_answer
    assert not fake_engine.started and not fake_engine.stopped


async def test_a_model_that_cannot_load_stops_the_start(make_bot, fake_engine):
    fake_engine.start_error = ModelNotFound("Model 'nope/missing' was not found on the Hugging Face Hub.")
    bot = make_bot()
    with pytest.raises(ModelNotFound):
        async with simcord.run(bot):
            pass
    await bot.close()


async def test_unloading_an_extension_removes_its_context_menu(world):
    bot = world.env.bot
    await bot.unload_extension("cogs.ocr")

    names = {command.name for command in bot.tree.get_commands()}
    assert "Extract text" not in names and "ocr" not in names
    assert "Describe image" in names


@pytest.mark.bot_settings(sync_commands=False)
@pytest.mark.simcord(strict_sync=True)
async def test_owner_sync_command_publishes_to_the_current_server(world, fake_engine):
    owner = world.guild.add_member(world.env.create_user("owner"))
    world.env.bot.owner_ids = {owner.id}
    assert world.member.available_commands(world.channel) == ()

    await world.member.send(world.channel, "!sync")
    refused = bot_messages(world.channel)[-1].content
    await owner.send(world.channel, "!sync")

    assert refused == "Only the bot's owner can use this command."
    assert bot_messages(world.channel)[-1].content == "Synced 11 app commands to this server."
    assert set(world.member.available_commands(world.channel)) == set(APP_COMMANDS)
    assert acknowledge_errors(world.env) == [commands.NotOwner]


def test_building_the_bot_says_nothing_about_voice(fake_engine, caplog):
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = True  # as on a fresh import
    with caplog.at_level("WARNING"):
        create_bot(make_settings(), fake_engine)
    assert "voice" not in caplog.text
