"""/settings: a server's admins choose for their server; the choices hold at once and after a restart."""

from __future__ import annotations

import discord
import pytest
from simcord.backend.errors import SetupError

from bot.errors import Denied
from bot.server_settings import ServerChoices
from cogs.server_settings import MANAGE_SERVER_TEXT
from inference import Task
from tests.conftest import acknowledge_errors, bot_messages, image_bytes


def admin_of(world):
    role = world.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    return world.guild.add_member(world.env.create_user("admin"), roles=[role])


async def settings(member, world, *words, **options):
    return await member.slash(world.channel, "settings " + " ".join(words), **options)


@pytest.fixture
def database_file(tmp_path):
    return str(tmp_path / "bot.sqlite3")


@pytest.fixture
async def simcord_bot(make_bot, database_file):
    bot = make_bot(database_path=database_file, user_cooldown_s=0, max_jobs_per_user=3)
    yield bot
    await bot.close()


async def test_an_admin_sees_the_settings_marked_as_defaults(world):
    result = await settings(admin_of(world), world, "show")
    assert result.ephemeral
    text = result.response.content
    assert "Answers in: any channel *(default)*" in text
    assert "OCR answers: private *(default)*" in text
    assert "Requests at once per person: 3 *(default)* (the owner's maximum: 3)" in text


async def test_a_member_without_manage_server_is_refused(world):
    # Discord shows /settings only to members who may manage the server...
    assert "settings" not in world.member.available_commands(world.channel)
    with pytest.raises(SetupError, match="default-member-permissions"):
        await settings(world.member, world, "cooldown", seconds=30)
    # ...unless the server's admins let others see it (Server Settings > Integrations): the bot checks too.
    [command] = [c for c in await world.env.bot.tree.fetch_commands() if c.name == "settings"]
    world.guild.set_command_permissions(command, {world.member: True})
    result = await settings(world.member, world, "cooldown", seconds=30)
    assert result.ephemeral and result.response.content == MANAGE_SERVER_TEXT
    assert world.env.bot.server_settings.choices(world.guild.id) == ServerChoices()
    acknowledge_errors(world.env)


async def test_channels_chosen_by_an_admin_hold_at_once(world, fake_engine):
    admin = admin_of(world)
    other = world.guild.create_text_channel("pictures")
    await settings(admin, world, "channels add", channel=other)
    await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])
    assert f"<#{other.id}>" in bot_messages(world.channel)[-1].content  # refused here, pointed there
    assert fake_engine.requests == []
    acknowledge_errors(world.env)
    await world.member.send(other, "!describe", attachments=[("a.png", image_bytes())])
    assert len(fake_engine.requests) == 1

    await settings(admin, world, "channels anywhere")
    await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])
    assert len(fake_engine.requests) == 2


async def test_ocr_roles_and_visibility(world, fake_engine):
    admin = admin_of(world)
    mods = world.guild.create_role("Mods")
    await settings(admin, world, "ocr-roles add", role=mods)
    await world.member.send(world.channel, "!ocr", attachments=[("a.png", image_bytes())])
    assert "limited" in bot_messages(world.channel)[-1].content and fake_engine.requests == []
    acknowledge_errors(world.env)

    await settings(admin, world, "ocr-roles default")
    await settings(admin, world, "ocr-answers", visibility="public")
    result = await world.member.slash(world.channel, "ocr", image=("a.png", image_bytes()))
    assert not result.ephemeral and fake_engine.requests[-1].task is Task.OCR


async def test_the_owners_limits_cannot_be_exceeded(world, make_bot):
    admin = admin_of(world)
    world.env.bot.settings = world.env.bot.settings.__class__(
        **{**world.env.bot.settings.__dict__, "user_cooldown_s": 10.0}
    )
    result = await settings(admin, world, "cooldown", seconds=5)
    assert "shortest cooldown to 10 s" in result.response.content
    result = await settings(admin, world, "jobs-per-person", count=5)
    assert "at most 3 requests" in result.response.content
    assert acknowledge_errors(world.env) == [Denied, Denied]
    assert world.env.bot.server_settings.choices(world.guild.id) == ServerChoices()

    await settings(admin, world, "cooldown", seconds=60)
    assert world.env.bot.policy(world.guild.id).cooldown_s == 60


async def test_a_stricter_jobs_per_person_applies_at_once(world, fake_engine):
    await settings(admin_of(world), world, "jobs-per-person", count=1)
    fake_engine.hold(world.env)
    await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])
    await world.member.send(world.channel, "!describe", attachments=[("b.png", image_bytes())])
    assert "a request in progress" in bot_messages(world.channel)[-1].content
    acknowledge_errors(world.env)
    fake_engine.release()
    await world.env.settle()


async def test_settings_survive_a_restart_and_their_history_is_kept(world, make_bot, database_file):
    admin = admin_of(world)
    pictures = world.guild.create_text_channel("pictures")
    await settings(admin, world, "alt-text add", channel=pictures)
    await settings(admin, world, "cooldown", seconds=45)
    restarted = make_bot(database_path=database_file, user_cooldown_s=0, max_jobs_per_user=3)
    await world.env.restart_bot(restarted)
    try:
        choices = restarted.server_settings.choices(world.guild.id)
        assert choices.alt_text_channel_ids == {pictures.id} and choices.cooldown_s == 45
        result = await settings(admin, world, "show")
        assert f"Automatic alt text in: <#{pictures.id}>" in result.response.content
        history = await restarted.server_settings.history(world.guild.id)
        assert [(name, new, by) for name, _old, new, by, _at in history] == [
            ("cooldown_s", "45.0", admin.id),
            ("alt_text_channel_ids", f"[{pictures.id}]", admin.id),
        ]
        await settings(admin, world, "reset")
        assert restarted.server_settings.choices(world.guild.id) == ServerChoices()
    finally:
        await restarted.close()


async def test_a_failed_write_tells_the_admin_and_changes_nothing(world):
    admin = admin_of(world)
    await world.env.bot.database.execute("DROP TABLE settings_changes")  # the write will fail half-way
    result = await settings(admin, world, "cooldown", seconds=30)
    assert result.ephemeral and "could not save" in result.response.content
    assert world.env.bot.server_settings.choices(world.guild.id) == ServerChoices()
    rows = await world.env.bot.database.fetch_all("SELECT * FROM server_settings")
    assert rows == []  # the first statement was rolled back with the second
    acknowledge_errors(world.env)


async def test_alt_text_cannot_be_turned_on_where_the_owner_lets_the_bot_not_answer(world):
    from tests.conftest import reconfigure

    admin = admin_of(world)
    pictures = world.guild.create_text_channel("pictures")
    reconfigure(world.env.bot, allowed_channel_ids=frozenset({world.channel.id}))
    result = await settings(admin, world, "alt-text add", channel=pictures)
    assert result.response.content == f"The bot's owner only lets it answer in <#{world.channel.id}>."
    assert acknowledge_errors(world.env) == [Denied]
    assert world.env.bot.server_settings.choices(world.guild.id).alt_text_channel_ids is None
    await settings(admin, world, "alt-text add", channel=world.channel)
    assert world.env.bot.server_settings.choices(world.guild.id).alt_text_channel_ids == {world.channel.id}


async def test_answers_come_in_the_askers_language_only_once_a_server_chooses_it(
    world, fake_engine, interaction_payload
):
    interaction_payload["locale"] = "vi"
    await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    assert fake_engine.requests[-1].language is None  # English until the server chooses otherwise

    admin = admin_of(world)
    interaction_payload["locale"] = "en-US"  # the admin's own
    result = await settings(admin, world, "answer-language", language="asker")
    said = result.response.content
    assert said == "Descriptions and comparisons now come in each asker's Discord language."
    shown = await settings(admin, world, "show")
    assert "each asker's Discord language" in shown.response.content
    interaction_payload["locale"] = "vi"
    await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    assert fake_engine.requests[-1].language == "Vietnamese"

    interaction_payload["locale"] = "en-GB"
    await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    assert fake_engine.requests[-1].language is None

    await settings(admin, world, "answer-language", language="english")
    interaction_payload["locale"] = "vi"
    await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    assert fake_engine.requests[-1].language is None
