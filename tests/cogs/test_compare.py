"""/compare, !compare and the "Compare images" menu: two to four images."""

from __future__ import annotations

import pytest

from inference import Task
from inference.errors import TooFewImages, TooManyImages
from tests.conftest import acknowledge_errors, bot_messages, image_bytes


def png(width: int) -> tuple[str, bytes]:
    return (f"w{width}.png", image_bytes((width, 10)))


@pytest.mark.parametrize("count", [2, 3, 4])
async def test_slash_compare_sends_every_image_in_order(world, fake_engine, count):
    images = {f"image{i + 1}": png(10 + i) for i in range(count)}

    result = await world.member.slash(world.channel, "compare", question="Which is widest?", **images)

    assert result.response.content == fake_engine.default_answer
    [request] = fake_engine.requests
    assert request.task is Task.COMPARE
    assert [image.width for image in request.images] == [10 + i for i in range(count)]
    assert request.question == "Which is widest?"


@pytest.mark.bot_settings(max_images=3)
async def test_slash_compare_refuses_more_images_than_allowed(world, fake_engine):
    result = await world.member.slash(
        world.channel, "compare", image1=png(1), image2=png(2), image3=png(3), image4=png(4)
    )

    assert result.ephemeral
    assert result.response.content == "You gave me 4 images; I can compare up to 3 at once."
    assert fake_engine.requests == []
    assert acknowledge_errors(world.env) == [TooManyImages]


async def test_prefix_compare_uses_images_on_the_message_and_the_one_it_replies_to(world, fake_engine):
    first = await world.member.send(world.channel, "before", attachments=[png(5)])
    await world.member.send(world.channel, "!compare", reply_to=first, attachments=[png(6), png(7)])

    assert [image.width for image in fake_engine.requests[0].images] == [6, 7, 5]
    assert bot_messages(world.channel)[-1].content == fake_engine.default_answer


async def test_prefix_compare_refuses_five_images(world, fake_engine):
    await world.member.send(world.channel, "!compare", attachments=[png(i + 1) for i in range(5)])

    assert bot_messages(world.channel)[-1].content == "You gave me 5 images; I can compare up to 4 at once."
    assert acknowledge_errors(world.env) == [TooManyImages]


async def test_prefix_compare_needs_two_images(world, fake_engine):
    await world.member.send(world.channel, "!compare", attachments=[png(1)])

    assert "at least two images" in bot_messages(world.channel)[-1].content
    assert acknowledge_errors(world.env) == [TooFewImages]


async def test_compare_images_menu(world, fake_engine):
    album = await world.member.send(world.channel, "album", attachments=[png(1), png(2), png(3)])

    result = await world.member.context_menu(world.channel, "Compare images", album)

    assert not result.ephemeral
    assert len(fake_engine.requests[0].images) == 3


async def test_compare_images_menu_on_a_single_image_refuses_privately(world, fake_engine):
    single = await world.member.send(world.channel, "one", attachments=[png(1)])

    result = await world.member.context_menu(world.channel, "Compare images", single)

    assert result.ephemeral
    assert "at least two images" in result.response.content
    assert acknowledge_errors(world.env) == [TooFewImages]
