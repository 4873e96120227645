"""What people post besides still pictures, through the bot as a member uses it: PDFs, animations, videos,
stickers and custom emoji, and the bad forms of each."""

from __future__ import annotations

import pytest

from bot.errors import ImageRejected
from inference import Media, Task
from inference.frames import FRAME_CROPS
from tests.conftest import acknowledge_errors, bot_messages, image_bytes
from tests.media_files import (
    animation_bytes,
    audio_only_bytes,
    empty_pdf_bytes,
    locked_pdf_bytes,
    pdf_bytes,
    video_bytes,
)

pytestmark = pytest.mark.simcord


def store_on_cdn(world, url: str, data: bytes) -> None:
    """Serve ``data`` at the address discord.py builds for a sticker or an emoji (Discord's own CDN)."""
    world.env.backend.cdn._blobs[url] = data


async def post(world, content: str = "", *, stickers=()):
    """A member's message with stickers (simcord's member.send cannot attach them)."""
    backend = world.env.backend
    backend.create_message(world.channel.id, world.member.id, content, stickers=list(stickers))
    await world.env.settle()


def sticker_on(world, name: str, format_type: int, data: bytes | None):
    from simcord.backend.models.message import MessageSticker

    created = world.guild.create_sticker(name, format_type=format_type)
    sticker = MessageSticker(id=created.id, name=name, format_type=format_type, guild_id=world.guild.id)
    if data is not None:
        extension = {1: "png", 2: "png", 4: "gif"}[format_type]
        host = "media.discordapp.net" if format_type == 4 else "cdn.discordapp.com"
        store_on_cdn(world, f"https://{host}/stickers/{created.id}.{extension}", data)
    return sticker


# ---------------------------------------------------------------- documents


async def test_a_pdfs_first_pages_are_described_as_pages(world, fake_engine):
    await world.member.slash(world.channel, "describe", image=("form.pdf", pdf_bytes(pages=6)))
    [request] = fake_engine.requests
    assert request.media is Media.PAGES
    assert request.labels == ("page 1", "page 2", "page 3", "page 4")  # MAX_IMAGES, 4 by default


async def test_the_pages_option_picks_pages(world, fake_engine):
    await world.member.slash(world.channel, "ocr", image=("scan.pdf", pdf_bytes(pages=6)), pages="5-6, 2")
    [request] = fake_engine.requests
    assert request.task is Task.OCR and request.labels == ("page 5", "page 6", "page 2")


@pytest.mark.parametrize(
    ("pages", "said"),
    [
        ("9", "the document has only 6 pages"),
        ("two", "I don't understand the pages"),
        ("1-9", "at most 4 pages"),
    ],
)
async def test_pages_that_cannot_be_read_are_said_plainly(world, fake_engine, pages, said):
    result = await world.member.slash(
        world.channel, "describe", image=("a.pdf", pdf_bytes(pages=6)), pages=pages
    )
    assert said in result.response.content
    assert fake_engine.requests == []
    assert len(acknowledge_errors(world.env)) == 1


async def test_a_locked_pdf_gets_a_clear_reply(world, fake_engine):
    await world.member.send(world.channel, "!ocr", attachments=[("secret.pdf", locked_pdf_bytes())])
    [reply] = bot_messages(world.channel)
    assert "secret.pdf" in reply.content and "password" in reply.content
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [ImageRejected]


# ---------------------------------------------------------------- animations and videos


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("dance.gif", animation_bytes(frames=20, format="GIF")),
        ("dance.webp", animation_bytes(frames=20, format="WEBP")),
        ("clip.mp4", video_bytes(seconds=4)),
        ("clip.webm", video_bytes(seconds=4, container="webm")),
        ("clip.mov", video_bytes(seconds=4, container="mov")),
    ],
)
async def test_animations_and_videos_are_read_as_frames_with_their_times(world, fake_engine, filename, data):
    await world.member.send(world.channel, "!describe", attachments=[(filename, data)])
    [request] = fake_engine.requests
    assert request.media is Media.FRAMES and len(request.images) == 4
    assert all(label.endswith(" s") for label in request.labels)
    assert request.num_crops == FRAME_CROPS


async def test_comparing_a_video_and_a_picture_reads_one_picture_of_each(world, fake_engine):
    await world.member.send(
        world.channel, "!compare", attachments=[("clip.mp4", video_bytes()), ("still.png", image_bytes())]
    )
    [request] = fake_engine.requests
    assert request.task is Task.COMPARE and len(request.images) == 2 and request.media is Media.PICTURES


async def test_a_video_too_long_gets_a_clear_reply(world, fake_engine, monkeypatch):
    from inference import frames

    monkeypatch.setattr(frames, "MAX_VIDEO_SECONDS", 120)
    await world.member.send(
        world.channel, "!describe", attachments=[("film.mp4", video_bytes(seconds=121, fps=1))]
    )
    [reply] = bot_messages(world.channel)
    assert "film.mp4" in reply.content and "longer than 2 minutes" in reply.content
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [ImageRejected]


# ---------------------------------------------------------------- stickers and emoji


async def test_a_sticker_is_read_as_a_picture(world, fake_engine):
    sticker = sticker_on(world, "wave", 1, image_bytes((160, 160), color=(0, 200, 0)))
    await post(world, "!describe", stickers=[sticker])
    [request] = fake_engine.requests
    assert request.images[0].getpixel((80, 80)) == (0, 200, 0)


async def test_a_lottie_sticker_gets_a_clear_reply(world, fake_engine):
    await post(world, "!describe", stickers=[sticker_on(world, "dancing", 3, None)])
    [reply] = bot_messages(world.channel)
    assert "dancing (sticker)" in reply.content and "vector sticker" in reply.content
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [ImageRejected]


async def test_custom_emoji_in_the_text_are_pictures_to_compare(world, fake_engine):
    first, second = 111111111111111111, 222222222222222222
    store_on_cdn(world, f"https://cdn.discordapp.com/emojis/{first}.png", image_bytes(color=(255, 0, 0)))
    store_on_cdn(world, f"https://cdn.discordapp.com/emojis/{second}.png", image_bytes(color=(0, 0, 255)))
    await world.member.send(world.channel, f"!compare <:red:{first}> <:blue:{second}> <:red:{first}>")
    [request] = fake_engine.requests
    assert [image.getpixel((1, 1)) for image in request.images] == [(255, 0, 0), (0, 0, 255)]


@pytest.mark.parametrize(
    ("filename", "data", "said"),
    [
        ("cut.gif", animation_bytes(frames=20)[:400], "damaged or incomplete"),
        ("cut.webp", animation_bytes(frames=20, format="WEBP")[:-40], "not an image I can read"),
        ("cut.mp4", video_bytes()[:300], "damaged or incomplete"),
        ("empty.pdf", empty_pdf_bytes(), "has no pages"),
        ("sound.mp4", audio_only_bytes(), "no video in it"),
    ],
)
async def test_the_bad_forms_of_each_kind_get_a_reply_naming_the_file(
    world, fake_engine, filename, data, said
):
    await world.member.send(world.channel, "!describe", attachments=[(filename, data)])
    [reply] = bot_messages(world.channel)
    assert filename in reply.content and said in reply.content
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [ImageRejected]


async def test_an_emoji_no_longer_on_discord_gets_a_reply(world, fake_engine):
    await world.member.send(world.channel, "!describe <:gone:333333333333333333>")
    [reply] = bot_messages(world.channel)
    assert ":gone: (emoji)" in reply.content and "no longer on Discord" in reply.content
    assert acknowledge_errors(world.env) == [ImageRejected]


async def test_prefix_commands_take_pages_too(world, fake_engine):
    await world.member.send(
        world.channel, "!describe pages:3 what is it for?", attachments=[("a.pdf", pdf_bytes(6))]
    )
    await world.member.send(world.channel, "!ocr md pages: 5-6", attachments=[("b.pdf", pdf_bytes(6))])
    await world.member.send(world.channel, "!ocr pages:2 md", attachments=[("c.pdf", pdf_bytes(6))])
    described, read, read_again = fake_engine.requests
    assert described.labels == ("page 3",) and described.question == "what is it for?"
    assert read.labels == ("page 5", "page 6") and read.markdown and read.question is None
    assert read_again.labels == ("page 2",) and read_again.markdown
