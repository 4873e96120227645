"""/describe, !describe and the "Describe image" menu, driven through simcord."""

from __future__ import annotations

import discord
import pytest

from bot.engine_errors import OUT_OF_MEMORY_TEXT
from bot.errors import UNEXPECTED_ERROR_TEXT, ImageRejected, NoImage
from bot.formatting import MESSAGE_LIMIT
from bot.jobs import NO_IMAGE_IN_COMMAND_TEXT, NO_IMAGE_IN_MESSAGE_TEXT, STOPPED_BY_DELETE_TEXT
from bot.reply import ANSWER_FILENAME, WORKING_TEXT, queue_text
from inference import OutOfMemory, Priority, RequestTimedOut, Task
from tests.conftest import (
    CHANNEL_MESSAGE,
    acknowledge_errors,
    bot_messages,
    first_responses,
    image_bytes,
    png_header_only,
)
from tests.fakes import Interrupted

# ---------------------------------------------------------------- slash


async def test_slash_describe_answers_with_the_engine_text(world, fake_engine):
    result = await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes()))

    assert first_responses(world.env) == [(CHANNEL_MESSAGE, False)]
    assert not result.ephemeral
    assert result.response.content == fake_engine.default_answer
    [request] = fake_engine.requests
    assert request.task is Task.DESCRIBE
    assert request.images[0].size == (32, 24)
    assert request.images[0].mode == "RGB"
    assert request.question is None
    assert request.user_id == world.member.id


async def test_a_waiting_request_is_told_its_place_in_line(world, fake_engine):
    fake_engine.places_in_line = [3]
    fake_engine.hold(world.env)
    result = await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes()))
    assert result.response.content == str(queue_text(3))
    fake_engine.release()
    await world.env.settle()

    edits = [
        entry.json.get("content")
        for entry in world.env.http_requests
        if entry.method == "PATCH" and isinstance(entry.json, dict)
    ]
    assert edits[0] == str(queue_text(3))
    assert result.response.content == fake_engine.default_answer


async def test_a_long_wait_in_line_is_told_in_minutes(world, fake_engine):
    fake_engine.places_in_line = [2]
    fake_engine.wait_estimate_s = 610.0  # a slow CPU's engine: about ten minutes for two answers ahead
    fake_engine.hold(world.env)
    result = await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes()))
    assert result.response.content == str(queue_text(2, 610.0))
    assert "about 10 min" in result.response.content
    fake_engine.release()
    await world.env.settle()
    assert result.response.content == fake_engine.default_answer


async def test_the_answer_streams_into_the_message_before_it_is_complete(world, fake_engine):
    fake_engine.piece_size = 10
    fake_engine.hold(world.env, after_pieces=2)
    result = await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes()))
    await world.env.advance_time(1.5)  # more than the one-second edit interval
    fake_engine.release()
    await world.env.settle()

    edits = [
        entry.json.get("content")
        for entry in world.env.http_requests
        if entry.method == "PATCH" and isinstance(entry.json, dict)
    ]
    answer = fake_engine.default_answer
    assert edits == [answer[:30].strip(), answer]  # one live preview, then the whole answer
    assert result.response.content == answer


async def test_slash_describe_passes_the_question(world, fake_engine):
    await world.member.slash(
        world.channel, "describe", image=("cat.png", image_bytes()), question="  What colour is it?  "
    )
    assert fake_engine.requests[0].question == "What colour is it?"


async def test_slash_describe_refuses_a_file_that_is_not_an_image(world, fake_engine):
    result = await world.member.slash(world.channel, "describe", image=("notes.txt", b"just some text"))

    assert "I can't use **notes.txt**: it is not an image I can read" in result.response.content
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [ImageRejected]


@pytest.mark.bot_settings(max_attachment_mb=0.01)  # the smallest limit allowed: 10 KiB
async def test_slash_describe_refuses_a_file_over_the_size_limit_without_downloading(world, fake_engine):
    noise = bytes(range(256)) * 60  # 15 KiB
    result = await world.member.slash(world.channel, "describe", image=("big.png", noise))

    assert result.ephemeral  # refused before the bot deferred, so only the user sees it
    assert "big.png" in result.response.content and "larger than" in result.response.content
    assert world.env.bot.fetcher.urls == []
    assert acknowledge_errors(world.env) == [ImageRejected]


async def test_slash_describe_refuses_a_decompression_bomb(world, fake_engine):
    result = await world.member.slash(
        world.channel, "describe", image=("bomb.png", png_header_only(9000, 9000))
    )

    assert "bomb.png" in result.response.content
    assert "pixels" in result.response.content
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [ImageRejected]


async def test_an_engine_failure_is_reported_and_the_next_request_works(world, fake_engine):
    fake_engine.answer_next(OutOfMemory(while_answering=False))

    failed = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    worked = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))

    assert failed.response.content == OUT_OF_MEMORY_TEXT[False]
    assert worked.response.content == fake_engine.default_answer
    assert acknowledge_errors(world.env) == [OutOfMemory]


@pytest.mark.parametrize("command", ["slash", "prefix"])
async def test_a_failure_midway_through_the_answer_replaces_the_partial_text(world, fake_engine, command):
    fake_engine.answer_next(Interrupted("The image shows", RequestTimedOut(60)))

    if command == "slash":
        result = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
        shown = result.response.content
    else:
        await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])
        shown = bot_messages(world.channel)[-1].content

    assert shown == "The answer took longer than 60 seconds and was stopped."
    assert len(bot_messages(world.channel)) == 1
    assert fake_engine.closed_streams == 1
    assert acknowledge_errors(world.env) == [RequestTimedOut]


async def test_an_unexpected_exception_is_logged_and_reported_generically(world, fake_engine, caplog):
    fake_engine.answer_next(ZeroDivisionError("bug in the engine"))

    failed = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    worked = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))

    assert failed.response.content == UNEXPECTED_ERROR_TEXT
    assert worked.response.content == fake_engine.default_answer
    assert "bug in the engine" in caplog.text
    assert acknowledge_errors(world.env) == [ZeroDivisionError]


async def test_a_long_answer_is_split_into_several_messages(world, fake_engine):
    answer = "\n".join(f"Detail {i}: " + "x" * 80 for i in range(40))  # ~3,700 characters
    fake_engine.answer_next(answer)

    result = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))

    parts = [result.response.content] + [followup.content for followup in result.followups]
    assert len(parts) == 2
    assert all(len(part) <= MESSAGE_LIMIT for part in parts)
    assert "\n".join(parts) == answer


async def test_a_long_answer_continues_in_a_new_message_while_it_streams(world, fake_engine):
    answer = "\n".join(f"Detail {i}: " + "x" * 80 for i in range(40))  # ~3,700 characters: two messages
    fake_engine.answer_next(answer)
    fake_engine.piece_size = 1_000
    fake_engine.hold(world.env, after_pieces=2)
    result = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))
    await world.env.advance_time(1.5)
    fake_engine.release()
    fake_engine.hold(world.env, after_pieces=3)  # 3,000 characters streamed, then wait again
    await world.env.settle()

    def followup_calls(method: str) -> list[str]:
        return [
            entry.json.get("content") if isinstance(entry.json, dict) else None
            for entry in world.env.http_requests
            if entry.method == method and "/webhooks/" in entry.path and "@original" not in entry.path
        ]

    [posted] = followup_calls("POST")  # the second message exists before the answer is complete
    assert posted and posted in answer[:3_000]
    await world.env.advance_time(1.5)
    fake_engine.release()
    await world.env.settle()

    [edited] = followup_calls("PATCH")  # then grows with the rest of the answer
    parts = [result.response.content] + [followup.content for followup in result.followups]
    assert parts == [parts[0], edited] and "\n".join(parts) == answer
    assert followup_calls("DELETE") == []


async def test_a_very_long_answer_is_sent_as_a_text_file(world, fake_engine):
    answer = "\n".join("y" * 99 for _ in range(100))  # 10,000 characters
    fake_engine.answer_next(answer)

    result = await world.member.slash(world.channel, "describe", image=("a.png", image_bytes()))

    assert "attached as a file" in result.response.content
    [followup] = result.followups
    [attachment] = followup.attachments
    assert attachment.filename == ANSWER_FILENAME
    assert await attachment.read() == answer.encode()


# ---------------------------------------------------------------- prefix and mention


async def test_prefix_describe_uses_the_attached_image_and_question(world, fake_engine):
    await world.member.send(
        world.channel, "!describe what colour is this?", attachments=[("a.png", image_bytes((10, 20)))]
    )

    [reply] = bot_messages(world.channel)
    assert reply.content == fake_engine.default_answer
    [request] = fake_engine.requests
    assert request.question == "what colour is this?"
    assert request.images[0].size == (10, 20)


async def test_prefix_describe_edits_its_working_message_into_the_answer(world, fake_engine):
    command = await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])

    [reply] = bot_messages(world.channel)
    assert reply.reference.message_id == command.id
    posted = [e for e in world.env.http_requests if e.method == "POST" and e.path.endswith("/messages")]
    edited = [e for e in world.env.http_requests if e.method == "PATCH"]
    assert posted[0].json["content"] == WORKING_TEXT
    assert edited[-1].json["content"] == fake_engine.default_answer


async def test_prefix_describe_reads_the_image_of_the_message_it_replies_to(world, fake_engine):
    photo = await world.member.send(world.channel, "my cat", attachments=[("cat.png", image_bytes((7, 9)))])
    await world.member.send(world.channel, "!describe", reply_to=photo)

    assert fake_engine.requests[0].images[0].size == (7, 9)
    assert bot_messages(world.channel)[-1].content == fake_engine.default_answer


async def test_prefix_describe_reads_an_image_embed_hosted_on_the_cdn(world, fake_engine):
    upload = await world.member.send(world.channel, "", attachments=[("pic.png", image_bytes((5, 6)))])
    embed = discord.Embed(title="shared")
    embed.set_image(url=upload.attachments[0].url)
    posted = await world.guild.create_webhook(world.channel).send(embed=embed)

    await world.member.send(world.channel, "!describe", reply_to=posted)

    assert fake_engine.requests[0].images[0].size == (5, 6)


async def test_image_embeds_from_other_sites_are_ignored(world, fake_engine):
    embed = discord.Embed(title="outside")
    embed.set_image(url="https://evil.example/attachments/1/2/x.png")
    posted = await world.guild.create_webhook(world.channel).send(embed=embed)

    await world.member.send(world.channel, "!describe", reply_to=posted)

    assert bot_messages(world.channel)[-1].content == NO_IMAGE_IN_COMMAND_TEXT
    assert acknowledge_errors(world.env) == [NoImage]


async def test_prefix_describe_without_an_image_says_how_to_give_one(world, fake_engine):
    await world.member.send(world.channel, "!describe")

    assert bot_messages(world.channel)[-1].content == NO_IMAGE_IN_COMMAND_TEXT
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [NoImage]


async def test_prefix_describe_names_a_non_image_attachment(world, fake_engine):
    await world.member.send(world.channel, "!describe", attachments=[("report.pdf", b"%PDF-1.7 ...")])

    assert "**report.pdf**" in bot_messages(world.channel)[-1].content
    assert acknowledge_errors(world.env) == [ImageRejected]


async def test_mention_works_as_a_prefix(world, fake_engine):
    bot_user = world.env.bot.user
    await world.member.send(
        world.channel, f"<@{bot_user.id}> describe", attachments=[("a.png", image_bytes())]
    )

    assert bot_messages(world.channel)[-1].content == fake_engine.default_answer


async def test_unknown_prefix_commands_are_ignored(world):
    await world.member.send(world.channel, "!dance")
    assert bot_messages(world.channel) == []


# ---------------------------------------------------------------- context menu


async def test_describe_image_menu_on_a_message(world, fake_engine):
    photo = await world.member.send(world.channel, "look", attachments=[("a.png", image_bytes((3, 4)))])

    result = await world.member.context_menu(world.channel, "Describe image", photo)

    assert not result.ephemeral
    assert result.response.content == fake_engine.default_answer
    assert fake_engine.requests[0].images[0].size == (3, 4)


async def test_describe_image_menu_on_a_message_without_images(world, fake_engine):
    text = await world.member.send(world.channel, "no pictures here")

    result = await world.member.context_menu(world.channel, "Describe image", text)

    assert result.ephemeral
    assert result.response.content == NO_IMAGE_IN_MESSAGE_TEXT
    assert acknowledge_errors(world.env) == [NoImage]


async def test_deleting_the_command_message_stops_the_answer(world, fake_engine):
    fake_engine.hold(world.env, after_pieces=1)
    message = await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])
    [reply] = bot_messages(world.channel)
    assert fake_engine.closed_streams == 0  # answering, held mid-stream

    await world.member.delete(message)
    await world.env.settle()

    assert fake_engine.closed_streams == 1  # the stream was closed: the engine aborts the request
    [reply] = bot_messages(world.channel)
    assert reply.content == STOPPED_BY_DELETE_TEXT
    assert world.env.bot.limiter.active_jobs(world.member.id) == 0
    fake_engine.release()
    await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])
    assert bot_messages(world.channel)[-1].content == fake_engine.default_answer


# ---------------------------------------------------------------- untrusted text

PHISHING_ANSWER = (
    "The sign says: claim your prize at https://evil.example/win or [log in](https://evil.example/x)."
)
SUPPRESS_EMBEDS = 1 << 2  # Discord's message flag: no link previews


@pytest.mark.parametrize("command", ["slash", "prefix"])
async def test_an_answer_carries_no_live_link_and_no_preview(world, fake_engine, command):
    fake_engine.answer_next(PHISHING_ANSWER)
    if command == "slash":
        await world.member.slash(world.channel, "describe", image=("sign.png", image_bytes()))
    else:
        await world.member.send(world.channel, "!describe", attachments=[("sign.png", image_bytes())])
    [answer] = bot_messages(world.channel)
    assert answer.content == (
        "The sign says: claim your prize at `https://evil.example/win` or log in (`https://evil.example/x`)."
    )
    if command == "prefix":  # a deferred slash response cannot carry the flag; its text has no link
        assert answer.flags.value & SUPPRESS_EMBEDS
    assert not answer.embeds and not answer.mentions


async def test_every_message_of_a_long_answer_keeps_previews_off_through_its_edits(world, fake_engine):
    long_answer = "\n".join(f"Line {i}: see https://evil.example/{i} " + "x" * 60 for i in range(60))
    fake_engine.answer_next(long_answer)
    fake_engine.piece_size = 1_000
    fake_engine.hold(world.env, after_pieces=3)  # a preview in two messages, then the whole answer
    await world.member.send(world.channel, "!describe", attachments=[("sign.png", image_bytes())])
    await world.env.advance_time(1.5)
    fake_engine.release()
    await world.env.settle()
    messages = bot_messages(world.channel)
    assert len(messages) >= 3
    edited = {e.path.rsplit("/", 1)[-1] for e in world.env.http_requests if e.method == "PATCH"}
    assert str(messages[-1].id) in edited  # a continuation was edited after its preview, and kept the flag
    for message in messages:
        assert message.flags.value & SUPPRESS_EMBEDS
        assert "`https://evil.example/" in message.content


async def test_the_stop_message_shows_a_name_as_plain_text(world):
    from bot.jobs import stopped_by

    assert str(stopped_by("**Mod** [x](https://evil.example)")) == (
        "Stopped by \\*\\*Mod\\*\\* x (`https://evil.example`)."
    )


# ---------------------------------------------------------------- the place in line


class CountingFetcher:
    def __init__(self, inner) -> None:
        self.inner, self.urls = inner, []

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        self.urls.append(url)
        return await self.inner.fetch(url, max_bytes=max_bytes)


@pytest.mark.parametrize("command", ["slash", "prefix"])
async def test_a_full_line_says_busy_before_anything_is_downloaded(world, fake_engine, monkeypatch, command):
    from bot.engine_errors import BUSY_TEXT
    from inference import EngineBusy

    bot = world.env.bot
    fetcher = CountingFetcher(bot.fetcher)
    monkeypatch.setattr(bot, "_fetcher", fetcher)

    def full(priority):
        raise EngineBusy()

    monkeypatch.setattr(fake_engine, "_refuse_if_full", full)
    if command == "slash":
        await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes()))
    else:
        await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes())])
    [shown] = bot_messages(world.channel)
    assert shown.content == BUSY_TEXT
    assert fetcher.urls == [] and fake_engine.requests == []
    assert acknowledge_errors(world.env) == [EngineBusy]


async def test_the_place_is_held_while_the_picture_downloads_and_given_back_when_answered(world, fake_engine):
    bot = world.env.bot
    held_while_downloading = []

    class Watching(CountingFetcher):
        async def fetch(self, url: str, *, max_bytes: int) -> bytes:
            held_while_downloading.append(fake_engine.places.count(Priority.PEOPLE))
            return await super().fetch(url, max_bytes=max_bytes)

    bot._fetcher = Watching(bot.fetcher)
    await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes())])
    assert held_while_downloading == [1]
    assert fake_engine.places.count(Priority.PEOPLE) == 0
    assert [place.held for place in fake_engine.places_given] == [False]


async def test_a_request_names_its_server_so_servers_take_turns(world, fake_engine):
    await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes())])
    [request] = fake_engine.requests
    assert request.group_id == world.guild.id


@pytest.mark.bot_settings(user_cooldown_s=100)
async def test_a_person_refused_again_and_again_is_told_once_every_half_minute(world, fake_engine):
    from bot.errors import OnCooldown

    for _ in range(3):
        await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes())])
    shown = [message.content for message in bot_messages(world.channel)]
    assert shown[0] == fake_engine.default_answer
    assert len(shown) == 2 and "going a bit fast" in shown[1]  # the third refusal is not posted
    result = await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes()))
    assert result.ephemeral and "going a bit fast" in result.response.content  # private ones always are
    await world.env.advance_time(31)
    await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes())])
    assert len(bot_messages(world.channel)) == 3  # told again, half a minute later
    assert acknowledge_errors(world.env) == [OnCooldown] * 4
