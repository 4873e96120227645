"""A corpus of what a hostile member may post, through the real bot (simcord, the real intake): each gets one
plain answer, nothing it says can link or ping, and the bot goes on serving the next person."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.errors import ImageRejected
from tests.bot.test_safe_text import live_addresses
from tests.conftest import acknowledge_errors, bot_messages, image_bytes, png_header_only


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=9)
    return out.getvalue()


REFUSED = {
    "a decompression bomb": ("bomb.png", png_header_only(50_000, 50_000), "pixels"),
    "an empty file": ("empty.png", b"", "the file is empty"),
    "text named as a picture": ("notes.png", b"claim your prize at https://evil.example", "not an image"),
    "half a picture": ("half.png", image_bytes((400, 300))[:200], "damaged"),
    "a name with markdown and a link": ("**[x](https://evil.example)**.png", b"GIF89a", "not an image"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_hostile_file_gets_one_plain_refusal_and_the_bot_serves_on(world, fake_engine, case):
    filename, data, reason = REFUSED[case]
    await world.member.send(world.channel, "!describe", attachments=[(filename, data)])
    [refusal] = bot_messages(world.channel)
    assert reason in refusal.content
    assert live_addresses(refusal.content) == [] and not refusal.embeds and not refusal.mentions
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [ImageRejected]
    other = world.guild.add_member(world.env.create_user("next"))
    await other.send(world.channel, "!describe", attachments=[("fine.png", image_bytes())])
    assert bot_messages(world.channel)[-1].content == fake_engine.default_answer


@pytest.mark.parametrize("mode", ["16-bit grey", "RGBA"])
async def test_a_small_file_of_36_megapixels_reaches_the_model_at_the_size_it_reads(world, fake_engine, mode):
    side = 6000
    if mode == "16-bit grey":
        picture = Image.fromarray(np.zeros((side, side), np.uint16))
    else:
        picture = Image.new("RGBA", (side, side), (10, 20, 30, 40))
    data = png(picture)
    assert len(data) < 200 * 1024
    await world.member.send(world.channel, "!describe", attachments=[("big.png", data)])
    [request] = fake_engine.requests
    # At most the largest canvas the model reads (16 crops), whatever the file claims.
    assert request.images[0].size == (1344, 1344)


async def test_an_answer_that_repeats_a_phishing_picture_cannot_link_ping_or_preview(world, fake_engine):
    fake_engine.answer_next(
        "It says: @everyone claim your prize at https://evil.example/win, "
        "[your account](https://evil.example/x), discord.gg/raid <@123> <#456>"
    )
    await world.member.send(world.channel, "!describe", attachments=[("scam.png", image_bytes())])
    [answer] = bot_messages(world.channel)
    assert live_addresses(answer.content) == []
    assert not answer.mentions and not answer.role_mentions and not answer.mention_everyone
    assert answer.flags.suppress_embeds and not answer.embeds
