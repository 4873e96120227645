"""Automatic alt text: chosen channels only, never pinging, skipped when described or opted out."""

from __future__ import annotations

from bot.alt_text import MACHINE_WRITTEN, PER_CHANNEL_PER_MINUTE
from cogs.alt_text import MORE_LABEL, OPTED_IN_TEXT, OPTED_OUT_TEXT
from inference import Priority, Task
from inference.errors import ModelFailed
from tests.cogs.test_answer_buttons import labels
from tests.conftest import bot_messages, image_bytes


def turn_on_alt_text(world, channel=None):
    """As /settings alt-text add would (tested in test_server_settings)."""
    bot = world.env.bot
    channel = channel or world.channel
    return bot.server_settings.change(
        world.guild.id, "alt_text_channel_ids", frozenset({channel.id}), by=world.member.id
    )


async def post_described(world, member, filename: str, data: bytes, description: str):
    """A message whose image carries its own alt text (member.send cannot set one)."""
    backend = world.env.backend
    payload = backend.cdn.store_attachment(backend.snowflake(), world.channel.id, filename, data, description)
    backend.create_message(world.channel.id, member.id, "", attachments=[payload])
    await world.env.settle()


async def test_an_image_in_a_chosen_channel_gets_alt_text(world, fake_engine):
    await turn_on_alt_text(world)
    fake_engine.answer_next("An image of a golden dog catching a red ball. It is sunny. The grass is green.")
    photo = await world.member.send(world.channel, "look!", attachments=[("dog.png", image_bytes((40, 30)))])
    [reply] = bot_messages(world.channel)
    assert reply.content == f"**Alt text:** A golden dog catching a red ball. It is sunny.\n{MACHINE_WRITTEN}"
    assert reply.reference.message_id == photo.id
    assert not reply.mentions and labels(reply) == [MORE_LABEL]
    [request] = fake_engine.requests
    assert request.task is Task.ALT_TEXT and request.priority is Priority.BACKGROUND
    assert [image.size for image in request.images] == [(40, 30)]


async def test_other_channels_get_none(world, fake_engine):
    elsewhere = world.guild.create_text_channel("elsewhere")
    await turn_on_alt_text(world, elsewhere)
    await world.member.send(world.channel, "look!", attachments=[("dog.png", image_bytes())])
    assert bot_messages(world.channel) == [] and fake_engine.requests == []


async def test_documents_videos_and_emoji_get_no_alt_text(world, fake_engine):
    from tests.media_files import pdf_bytes, video_bytes

    await turn_on_alt_text(world)
    files = [("form.pdf", pdf_bytes(pages=1)), ("clip.mp4", video_bytes(seconds=1))]
    await world.member.send(world.channel, "look <:wave:111111111111111111>", attachments=files)
    assert bot_messages(world.channel) == [] and fake_engine.requests == []


async def test_an_image_with_a_description_is_skipped(world, fake_engine):
    await turn_on_alt_text(world)
    await post_described(world, world.member, "dog.png", image_bytes(), "My dog Rex with his ball")
    assert bot_messages(world.channel) == [] and fake_engine.requests == []


async def test_people_who_opted_out_are_left_alone_until_they_opt_in(world, fake_engine):
    await turn_on_alt_text(world)
    result = await world.member.slash(world.channel, "alttext optout")
    assert result.ephemeral and result.response.content == OPTED_OUT_TEXT
    await world.member.send(world.channel, "", attachments=[("a.png", image_bytes())])
    assert fake_engine.requests == []
    result = await world.member.slash(world.channel, "alttext optin")
    assert result.response.content == OPTED_IN_TEXT
    await world.member.send(world.channel, "", attachments=[("a.png", image_bytes())])
    assert len(fake_engine.requests) == 1


async def test_a_command_about_the_image_gets_its_answer_not_alt_text_too(world, fake_engine):
    await turn_on_alt_text(world)
    await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])
    assert [request.task for request in fake_engine.requests] == [Task.DESCRIBE]


async def test_a_channel_gets_a_limited_number_per_minute(world, fake_engine):
    await turn_on_alt_text(world)
    for number in range(PER_CHANNEL_PER_MINUTE + 2):
        await world.member.send(world.channel, "", attachments=[(f"{number}.png", image_bytes())])
    assert len(fake_engine.requests) == PER_CHANNEL_PER_MINUTE


async def test_more_describes_the_image_in_full_privately(world, fake_engine):
    await turn_on_alt_text(world)
    fake_engine.answer_next("A dog.", "A golden retriever on a lawn, mid-jump, catching a red ball...")
    await world.member.send(world.channel, "", attachments=[("dog.png", image_bytes((40, 30)))])
    [reply] = bot_messages(world.channel)
    bob = world.guild.add_member(world.env.create_user("bob"))
    result = await bob.click(reply, label=MORE_LABEL)
    assert result.ephemeral and result.response.content.startswith("A golden retriever")
    assert fake_engine.requests[-1].task is Task.DESCRIBE
    assert fake_engine.requests[-1].priority is Priority.PEOPLE  # someone is waiting for this one


async def test_several_images_are_numbered_with_a_more_button_each(world, fake_engine):
    await turn_on_alt_text(world)
    fake_engine.answer_next("A cat.", "A dog.")
    await world.member.send(
        world.channel, "", attachments=[("a.png", image_bytes()), ("b.png", image_bytes())]
    )
    [reply] = bot_messages(world.channel)
    assert reply.content.startswith("**Image 1:** A cat.\n**Image 2:** A dog.")
    assert labels(reply) == [f"{MORE_LABEL} about image 1", f"{MORE_LABEL} about image 2"]


def alt_text_count(world, outcome: str) -> float:
    """The owner's figure for automatic alt text ending in ``outcome``."""
    registry = world.env.bot.metrics.registry
    return (
        registry.get_sample_value("phi3v_bot_requests_total", {"task": "alt_text", "outcome": outcome}) or 0.0
    )


async def test_alt_text_is_counted_in_the_owners_figures(world, fake_engine):
    await turn_on_alt_text(world)
    await world.member.send(world.channel, "", attachments=[("dog.png", image_bytes())])
    assert len(bot_messages(world.channel)) == 1
    assert alt_text_count(world, "answer") == 1
    assert not world.env.bot.replies.open


async def test_a_failed_description_posts_nothing_and_is_counted(world, fake_engine):
    await turn_on_alt_text(world)
    fake_engine.answer_next(ModelFailed())
    await world.member.send(world.channel, "", attachments=[("dog.png", image_bytes())])
    assert bot_messages(world.channel) == []
    assert alt_text_count(world, "failure") == 1
    assert not world.env.bot.replies.open


async def test_deleting_the_picture_stops_its_alt_text(world, fake_engine):
    await turn_on_alt_text(world)
    fake_engine.hold(world.env, after_pieces=1)
    photo = await world.member.send(world.channel, "", attachments=[("dog.png", image_bytes())])
    assert fake_engine.closed_streams == 0  # describing it, held mid-answer

    await world.member.delete(photo)
    await world.env.settle()

    assert fake_engine.closed_streams == 1  # the engine was told to stop
    assert bot_messages(world.channel) == []  # nothing is said about it: nobody asked
    assert alt_text_count(world, "stopped") == 1
    fake_engine.release()


async def test_shutting_down_ends_alt_text_without_a_message(world, fake_engine):
    await turn_on_alt_text(world)
    fake_engine.hold(world.env, after_pieces=1)
    await world.member.send(world.channel, "", attachments=[("dog.png", image_bytes())])

    await world.env.bot.close()
    await world.env.settle()

    assert bot_messages(world.channel) == []
    assert alt_text_count(world, "stopped") == 1
    assert not world.env.bot.replies.open


async def test_alt_text_carries_no_live_link_and_no_preview(world, fake_engine):
    await turn_on_alt_text(world)
    fake_engine.answer_next("A poster. It says visit https://evil.example/free and join discord.gg/raid.")
    await world.member.send(world.channel, "look!", attachments=[("poster.png", image_bytes())])
    [reply] = bot_messages(world.channel)
    assert "`https://evil.example/free`" in reply.content and "`discord.gg/raid`" in reply.content
    assert reply.flags.suppress_embeds and not reply.embeds and not reply.mentions


async def test_a_full_background_line_downloads_nothing_and_posts_nothing(world, fake_engine, monkeypatch):
    from inference import EngineBusy
    from tests.cogs.test_describe import CountingFetcher

    await turn_on_alt_text(world)
    bot = world.env.bot
    fetcher = CountingFetcher(bot.fetcher)
    monkeypatch.setattr(bot, "_fetcher", fetcher)

    def full(priority):
        if priority is Priority.BACKGROUND:
            raise EngineBusy()

    monkeypatch.setattr(fake_engine, "_refuse_if_full", full)
    await world.member.send(world.channel, "look!", attachments=[("dog.png", image_bytes())])
    assert bot_messages(world.channel) == [] and fetcher.urls == [] and fake_engine.requests == []
    assert alt_text_count(world, "refusal") == 1


async def test_alt_text_keeps_to_the_channels_the_owner_allows(world, fake_engine):
    from tests.conftest import reconfigure

    await turn_on_alt_text(world)  # chosen before the owner narrowed the bot to another channel
    elsewhere = world.guild.create_text_channel("elsewhere")
    reconfigure(world.env.bot, allowed_channel_ids=frozenset({elsewhere.id}))
    await world.member.send(world.channel, "look!", attachments=[("dog.png", image_bytes())])
    assert bot_messages(world.channel) == [] and fake_engine.requests == []


async def test_a_poster_gets_alt_text_within_their_cooldown_without_delaying_their_own_commands(
    world, fake_engine
):
    from tests.conftest import reconfigure

    await turn_on_alt_text(world)
    reconfigure(world.env.bot, user_cooldown_s=30.0)
    for number in range(3):
        await world.member.send(world.channel, "", attachments=[(f"{number}.png", image_bytes())])
    assert [request.task for request in fake_engine.requests] == [Task.ALT_TEXT]  # one, then the cooldown
    await world.member.send(world.channel, "!describe", attachments=[("mine.png", image_bytes())])
    assert [request.task for request in fake_engine.requests] == [Task.ALT_TEXT, Task.DESCRIBE]
    await world.env.advance_time(31)
    await world.member.send(world.channel, "", attachments=[("later.png", image_bytes())])
    assert [request.task for request in fake_engine.requests][-1] is Task.ALT_TEXT


async def test_a_poster_has_at_most_their_jobs_at_once_of_alt_text(world, fake_engine):
    from tests.conftest import reconfigure

    await turn_on_alt_text(world)
    reconfigure(world.env.bot, max_jobs_per_user=1)
    fake_engine.hold(world.env)
    await world.member.send(world.channel, "", attachments=[("a.png", image_bytes())])
    await world.member.send(world.channel, "", attachments=[("b.png", image_bytes())])
    assert len(fake_engine.requests) == 1
    fake_engine.release()
    await world.env.settle()
    assert len(bot_messages(world.channel)) == 1
