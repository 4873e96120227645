"""Find the images a request is about, from Discord objects, without downloading anything."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import discord

from bot.errors import UserFacingError
from bot.images import ImageSource, is_discord_upload
from bot.text import N_

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".gif", ".bmp")
IMAGE_EMBED_TYPES = ("image", "gifv", "rich", "article")
IMAGES_GONE_TEXT = N_(
    "The image this conversation is about was deleted (or I can no longer see its message), so I "
    "cannot look at it again. Start a new conversation with the image."
)


class ImagesGone(UserFacingError):
    """A conversation's image was deleted."""

    def __init__(self) -> None:
        super().__init__(IMAGES_GONE_TEXT)


def source_from_attachment(
    attachment: discord.Attachment, message: discord.Message | None = None
) -> ImageSource:
    """An attachment's source; with its ``message``, a follow-up can find it again later."""
    return ImageSource(
        filename=attachment.filename,
        url=attachment.url,
        size=attachment.size,
        content_type=attachment.content_type,
        channel_id=message.channel.id if message is not None else None,
        message_id=message.id if message is not None else None,
        attachment_id=attachment.id,
    )


def looks_like_image(attachment: discord.Attachment) -> bool:
    """A first guess from metadata; the content is checked for real when decoded."""
    if attachment.content_type and attachment.content_type.startswith("image/"):
        return True
    return attachment.filename.lower().endswith(IMAGE_EXTENSIONS)


def _filename_from_url(url: str) -> str:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name or "image"


def _embed_image_urls(embed: discord.Embed) -> list[str]:
    if embed.type not in IMAGE_EMBED_TYPES:
        return []
    candidates = [embed.image.url, embed.thumbnail.url]
    if embed.type == "image":
        candidates.insert(0, embed.url)
    return [url for url in candidates if url]


def sources_from_messages(
    messages: Iterable[discord.Message], allowed_hosts: Iterable[str]
) -> list[ImageSource]:
    """Images in these messages, in order: image attachments, then image embeds on the Discord CDN.

    If there are attachments but none look like images, they are all returned,
    so the person hears exactly which file is not an image.
    """
    hosts = frozenset(allowed_hosts)
    sources: list[ImageSource] = []
    other_files: list[ImageSource] = []
    seen: set[str] = set()

    def add(source: ImageSource, into: list[ImageSource]) -> None:
        if source.url not in seen:
            seen.add(source.url)
            into.append(source)

    for message in messages:
        for attachment in message.attachments:
            add(
                source_from_attachment(attachment, message),
                sources if looks_like_image(attachment) else other_files,
            )
        for embed in message.embeds:
            url = next((u for u in _embed_image_urls(embed) if is_discord_upload(u, hosts)), None)
            if url is not None:
                source = ImageSource(
                    filename=_filename_from_url(url),
                    url=url,
                    channel_id=message.channel.id,
                    message_id=message.id,
                )
                add(source, sources)
    return sources or other_files


def _same_file(url: str, other: str) -> bool:
    """Two links to the same upload (Discord's links differ only in their signature query)."""
    return urlsplit(url).path == urlsplit(other).path


class Channels(Protocol):
    """Where messages are looked up: the bot (a ``discord.Client``)."""

    def get_channel(self, id: int, /) -> Any: ...

    async def fetch_channel(self, channel_id: int, /) -> Any: ...


async def refresh_sources(
    client: Channels, sources: Iterable[ImageSource], allowed_hosts: Iterable[str]
) -> tuple[ImageSource, ...]:
    """The same images with fresh links, read again from their messages (Discord's links expire).

    A source without a message (a slash command's upload) is kept as it is. Raises
    :class:`ImagesGone` when a message or the file on it was deleted or can no longer be read.
    """
    messages: dict[int, discord.Message] = {}
    fresh: list[ImageSource] = []
    for source in sources:
        if source.message_id is None or source.channel_id is None:
            fresh.append(source)
            continue
        message = messages.get(source.message_id)
        if message is None:
            message = messages[source.message_id] = await _fetch_message(
                client, source.channel_id, source.message_id
            )
        found = [
            candidate
            for candidate in sources_from_messages([message], allowed_hosts)
            if (source.attachment_id is not None and candidate.attachment_id == source.attachment_id)
            or (source.attachment_id is None and _same_file(candidate.url, source.url))
        ]
        if not found:
            raise ImagesGone()
        fresh.append(found[0])
    return tuple(fresh)


async def _fetch_message(client: Channels, channel_id: int, message_id: int) -> discord.Message:
    try:
        channel = client.get_channel(channel_id) or await client.fetch_channel(channel_id)
        return await channel.fetch_message(message_id)
    except (discord.NotFound, discord.Forbidden, AttributeError):
        raise ImagesGone() from None


async def referenced_message(message: discord.Message) -> discord.Message | None:
    """The message that ``message`` replies to, fetched if Discord did not include it."""
    reference = message.reference
    if reference is None or reference.message_id is None:
        return None
    if isinstance(reference.resolved, discord.Message):
        return reference.resolved
    if isinstance(reference.cached_message, discord.Message):
        return reference.cached_message
    if reference.channel_id != message.channel.id:
        return None
    try:
        return await message.channel.fetch_message(reference.message_id)
    except discord.HTTPException:
        log.info("Could not fetch the replied-to message %s", reference.message_id)
        return None
