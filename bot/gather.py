"""Find the images a request is about, from Discord objects, without downloading anything."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

import discord

from bot.images import ImageSource, is_discord_upload

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".gif", ".bmp")
IMAGE_EMBED_TYPES = ("image", "gifv", "rich", "article")


def source_from_attachment(attachment: discord.Attachment) -> ImageSource:
    return ImageSource(
        filename=attachment.filename,
        url=attachment.url,
        size=attachment.size,
        content_type=attachment.content_type,
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
            add(source_from_attachment(attachment), sources if looks_like_image(attachment) else other_files)
        for embed in message.embeds:
            url = next((u for u in _embed_image_urls(embed) if is_discord_upload(u, hosts)), None)
            if url is not None:
                add(ImageSource(filename=_filename_from_url(url), url=url), sources)
    return sources or other_files


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
