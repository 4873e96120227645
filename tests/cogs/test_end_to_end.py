"""The whole path with the real model.

simcord's Discord -> cogs -> image intake -> LocalEngine -> the tiny Phi-3-vision checkpoint.

The tiny checkpoint has random weights, so its text is gibberish; these tests check
the shape of what users see, not the words.
"""

from __future__ import annotations

import pytest

from bot.reply import WORKING_TEXT
from inference import EngineConfig, LocalEngine
from tests.conftest import bot_messages, image_bytes
from tests.inference.conftest import TINY_CHECKPOINT
from tests.media_files import animation_bytes, pdf_bytes, video_bytes

pytestmark = pytest.mark.simcord(settle_timeout=120)


@pytest.fixture
async def real_engine():
    config = EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu", dtype="float32", max_new_tokens=6)
    engine = LocalEngine(config)
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture
async def simcord_bot(make_bot, real_engine):
    bot = make_bot(real_engine, manage_engine=False)
    yield bot
    await bot.close()


async def test_slash_describe_with_the_real_model(world):
    result = await world.member.slash(world.channel, "describe", image=("cat.png", image_bytes((300, 200))))
    assert result.response.content.strip()
    assert result.response.content != WORKING_TEXT


async def test_prefix_compare_with_the_real_model(world):
    message = await world.member.send(
        world.channel,
        "!compare which is redder?",
        attachments=[("a.png", image_bytes((64, 64))), ("b.png", image_bytes((90, 40), color=(0, 0, 255)))],
    )
    [answer] = bot_messages(world.channel)
    assert answer.content.strip() and answer.content != WORKING_TEXT
    assert answer.reference.message_id == message.id


async def test_ocr_is_private_and_in_a_code_block_with_the_real_model(world):
    result = await world.member.slash(world.channel, "ocr", image=("shot.png", image_bytes((400, 120))))
    assert result.ephemeral
    assert result.response.content.startswith("```")


async def test_a_follow_up_conversation_with_the_real_model(world):
    await world.member.send(world.channel, "!describe", attachments=[("cat.png", image_bytes((300, 200)))])
    [first] = bot_messages(world.channel)
    await world.member.send(world.channel, "!describe what colour is it?", reply_to=first)
    await world.member.send(
        world.channel, "!describe and its size?", reply_to=bot_messages(world.channel)[-1]
    )
    answers = bot_messages(world.channel)
    assert len(answers) == 3
    assert all(answer.content.strip() and answer.content != WORKING_TEXT for answer in answers)
    remembered = await world.env.bot.conversations.recall(answers[-1].id)
    assert [turn.question for turn in remembered.turns] == [None, "what colour is it?", "and its size?"]


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("form.pdf", pdf_bytes(pages=2)),
        ("clip.mp4", video_bytes(seconds=2, size=(640, 360))),
        ("dance.gif", animation_bytes(frames=12, size=(200, 150))),
        ("dance.webp", animation_bytes(frames=12, size=(200, 150), format="WEBP")),
    ],
)
async def test_a_pdfs_pages_and_an_animations_or_videos_frames_with_the_real_model(world, filename, data):
    await world.member.send(world.channel, "!describe", attachments=[(filename, data)])
    [answer] = bot_messages(world.channel)
    assert answer.content.strip() and answer.content != WORKING_TEXT
    assert "can't use" not in answer.content
    stats = world.env.bot.engine.stats()
    assert stats is not None and stats.answers_finished == 1


async def test_custom_emoji_and_a_sticker_compared_with_the_real_model(world):
    from simcord.backend.models.message import MessageSticker

    emoji_id = 111111111111111111
    created = world.guild.create_sticker("wave", format_type=1)
    cdn = world.env.backend.cdn._blobs  # served where discord.py looks for them: Discord's own CDN
    cdn[f"https://cdn.discordapp.com/emojis/{emoji_id}.png"] = image_bytes((96, 96), color=(255, 0, 0))
    cdn[f"https://cdn.discordapp.com/stickers/{created.id}.png"] = image_bytes((160, 160), color=(0, 200, 0))
    sticker = MessageSticker(id=created.id, name="wave", format_type=1, guild_id=world.guild.id)
    world.env.backend.create_message(
        world.channel.id, world.member.id, f"!compare <:red:{emoji_id}>", stickers=[sticker]
    )
    await world.env.settle()
    [answer] = bot_messages(world.channel)
    assert answer.content.strip() and answer.content != WORKING_TEXT and "can't use" not in answer.content
