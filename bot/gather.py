"""Find the images a request is about, from Discord objects, without downloading anything."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import discord

from bot.errors import UserFacingError
from bot.images import LOTTIE_CONTENT_TYPE, ImageSource, is_discord_upload
from bot.text import N_, T

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".gif", ".bmp")
# Files read as several pictures: a document's pages, a video's frames (inference.media).
DOCUMENT_AND_VIDEO_EXTENSIONS = (".pdf", ".mp4", ".m4v", ".mov", ".webm")
DOCUMENT_AND_VIDEO_TYPES = ("application/pdf", "video/mp4", "video/quicktime", "video/webm")
# A custom emoji in a message's text: <:name:id>, or <a:name:id> when animated.
CUSTOM_EMOJI = re.compile(r"<(a?):(\w{2,32}):(\d{15,21})>")
MAX_EMOJI = 8  # custom emoji looked at in one message: the rest are left out
IMAGE_EMBED_TYPES = ("image", "gifv", "rich", "article")
IMAGES_GONE_TEXT = N_(
    "The image this conversation is about was deleted (or I can no longer see its message), so I "
    "cannot look at it again. Start a new conversation with the image."
)


PAGE_RANGE = re.compile(r"^(\d{1,5})(?:\s*-\s*(\d{1,5}))?$")


def parse_pages(text: str | None, max_pages: int) -> tuple[int, ...] | None:
    """The pages a person asked for: ``2``, ``1-3``, ``1, 4, 6-7``; None for none said. At most
    ``max_pages``, in the order given, each once; anything else is a :class:`UserFacingError` saying how."""
    if text is None or not text.strip():
        return None
    pages: list[int] = []
    for part in text.split(","):
        match = PAGE_RANGE.match(part.strip())
        first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
        if not match or first < 1 or last < first:
            raise UserFacingError(
                T(
                    "I don't understand the pages `{text}`. Write them like `2`, `1-3` or `1, 4`.",
                    text=text[:40],
                )
            )
        if last - first + len(pages) >= max_pages:
            raise UserFacingError(T("I read at most {limit} pages of a document at once.", limit=max_pages))
        pages += [page for page in range(first, last + 1) if page not in pages]
    return tuple(pages)


PAGES_WORD = re.compile(r"^pages?:\s*([0-9][0-9,\s-]*)\s*", re.IGNORECASE)


def pages_word(words: str | None) -> tuple[str | None, str | None]:
    """A prefix command's leading ``pages:2-3`` (the pages as typed) and the words after it."""
    text = (words or "").strip()
    match = PAGES_WORD.match(text)
    if match is None:
        return None, text or None
    return match[1].strip(), text[match.end() :].strip() or None


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


PAGES_HELP = "A PDF's pages to read, like 2 or 1-3 (default: the first ones)"


def source_with_pages(attachment: discord.Attachment, pages: str | None, max_pages: int) -> ImageSource:
    """A slash command's attachment, with the pages of a document the person asked for."""
    return dataclasses.replace(source_from_attachment(attachment), pages=parse_pages(pages, max_pages))


def looks_like_image(attachment: discord.Attachment) -> bool:
    """A still or animated picture, as a first guess from metadata (automatic alt text reads only these)."""
    content_type = _content_type(attachment)
    return content_type.startswith("image/") or attachment.filename.lower().endswith(IMAGE_EXTENSIONS)


def looks_readable(attachment: discord.Attachment) -> bool:
    """A picture, a PDF or a video, as a first guess from metadata; the content is checked for real when
    decoded."""
    if looks_like_image(attachment) or _content_type(attachment) in DOCUMENT_AND_VIDEO_TYPES:
        return True
    return attachment.filename.lower().endswith(DOCUMENT_AND_VIDEO_EXTENSIONS)


def _content_type(attachment: discord.Attachment) -> str:
    return (attachment.content_type or "").split(";")[0].strip().lower()


def sources_from_stickers(message: discord.Message) -> list[ImageSource]:
    """The message's stickers as pictures (PNG, APNG, GIF on Discord's CDN); a Lottie sticker is kept, marked,
    so the person hears why it cannot be read."""
    found = []
    for sticker in message.stickers:
        lottie = sticker.format is discord.StickerFormatType.lottie
        found.append(
            ImageSource(
                filename=f"{sticker.name} (sticker)",
                url=sticker.url,
                content_type=LOTTIE_CONTENT_TYPE if lottie else None,
                channel_id=message.channel.id,
                message_id=message.id,
            )
        )
    return found


def sources_from_emoji(message: discord.Message) -> list[ImageSource]:
    """The custom emoji in the message's text, in order, each once, as pictures on Discord's CDN."""
    found: dict[int, ImageSource] = {}
    for animated, name, emoji_id in CUSTOM_EMOJI.findall(message.content or ""):
        emoji = discord.PartialEmoji(name=name, id=int(emoji_id), animated=bool(animated))
        if emoji.id is not None and emoji.id not in found and len(found) < MAX_EMOJI:
            found[emoji.id] = ImageSource(
                filename=f":{name}: (emoji)",
                url=emoji.url,
                channel_id=message.channel.id,
                message_id=message.id,
            )
    return list(found.values())


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
    """Images in these messages, in order: image attachments (PDFs and videos too), image embeds on the
    Discord CDN, stickers, then custom emoji in the text.

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
                sources if looks_readable(attachment) else other_files,
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
        for source in [*sources_from_stickers(message), *sources_from_emoji(message)]:
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
