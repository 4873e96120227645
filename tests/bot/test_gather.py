"""Finding the message a command replies to, when Discord did not send it along."""

from __future__ import annotations

from types import SimpleNamespace

import discord

from bot.gather import referenced_message


class Channel:
    def __init__(self, channel_id: int, messages: dict[int, object]) -> None:
        self.id = channel_id
        self.messages = messages
        self.fetched: list[int] = []

    async def fetch_message(self, message_id: int):
        self.fetched.append(message_id)
        if message_id not in self.messages:
            response = SimpleNamespace(status=404, reason="Not Found")
            raise discord.NotFound(response, {"code": 10008, "message": "Unknown Message"})
        return self.messages[message_id]


def command(channel: Channel, *, replies_to: int | None, channel_id: int | None = None):
    reference = None
    if replies_to is not None:
        reference = SimpleNamespace(
            message_id=replies_to, channel_id=channel_id or channel.id, resolved=None, cached_message=None
        )
    return SimpleNamespace(reference=reference, channel=channel)


async def test_a_replied_to_message_that_is_not_cached_is_fetched():
    photo = object()
    channel = Channel(5, {42: photo})
    assert await referenced_message(command(channel, replies_to=42)) is photo
    assert channel.fetched == [42]


async def test_a_replied_to_message_that_is_gone_means_none():
    channel = Channel(5, {})
    assert await referenced_message(command(channel, replies_to=42)) is None
    assert channel.fetched == [42]


async def test_a_reply_across_channels_is_not_fetched():
    channel = Channel(5, {42: object()})
    assert await referenced_message(command(channel, replies_to=42, channel_id=6)) is None
    assert channel.fetched == []


async def test_no_reference_means_none():
    channel = Channel(5, {})
    assert await referenced_message(command(channel, replies_to=None)) is None
