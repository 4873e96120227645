"""Attachment intake: check where a file comes from, download it within limits, decode it safely.

Three separate steps, so each can be tested alone:

* :func:`check_source` looks only at metadata (URL host, declared size) and never touches the network;
* a :class:`Fetcher` downloads bytes (:class:`HttpFetcher` in production: no redirects,
  a time limit, and a size cap enforced while streaming);
* :func:`decode_file` is pure: bytes in, the pictures the model reads out (a picture, a PDF's pages, an
  animation's or a video's frames: :class:`inference.media.Pictures`), or :class:`ImageRejected`.

:func:`load_images` and :func:`fetch_pictures` tie them together and decode off the event loop, a fixed
number at a time. The callers hold a place in the engine's line before any of this
(``Engine.hold_place``), so nothing is downloaded for a request that would be refused as busy.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiohttp
import yarl
from PIL import Image

from bot.engine_errors import image_problem_text
from bot.errors import ImageRejected
from bot.text import T, Text
from inference import errors, media
from inference.media import Pictures

# Pictures decoded at once, whatever the number of requests: each holds its picture at full size for a moment
# (up to ~200 MB for 40 megapixels with transparency) before it is reduced to what the model reads.
DECODES_AT_ONCE = 2
_DECODING = ThreadPoolExecutor(max_workers=DECODES_AT_ONCE, thread_name_prefix="decode")
# Paths on the Discord CDN that hold uploaded files, stickers and custom emoji (not proxied external links).
CDN_UPLOAD_PATH_PREFIXES = ("/attachments/", "/ephemeral-attachments/", "/stickers/", "/emojis/")
LOTTIE_CONTENT_TYPE = "application/lottie+json"  # a sticker drawn as vectors (bot.gather marks it)
DOWNLOAD_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ImageSource:
    """Where an image lives, from Discord's metadata (nothing downloaded yet)."""

    filename: str
    url: str
    size: int | None = None  # bytes, when Discord told us
    content_type: str | None = None
    # The message it is on, so a follow-up can find it again (Discord's file links expire).
    channel_id: int | None = None
    message_id: int | None = None
    attachment_id: int | None = None
    pages: tuple[int, ...] | None = None  # a document's pages asked for (1-based); None: the first ones

    def __post_init__(self) -> None:
        if self.pages is not None:  # read back from JSON as a list
            object.__setattr__(self, "pages", tuple(self.pages))


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    allowed_hosts: frozenset[str]
    download_timeout_s: float


class DownloadError(Exception):
    """A download failed; its :class:`Text` says why in plain words."""


class DownloadTooLarge(DownloadError):
    pass


GONE_REASON = T("it is no longer on Discord (deleted, or its link expired)")
GONE_STATUSES = frozenset({403, 404, 410})


class Fetcher(Protocol):
    """Downloads one URL, refusing to read more than ``max_bytes``."""

    async def fetch(self, url: str, *, max_bytes: int) -> bytes: ...


def is_discord_upload(url: str, allowed_hosts: Iterable[str]) -> bool:
    """True for an https URL of a file uploaded to Discord (not a user-typed link).

    The path is judged as the HTTP client will request it (yarl, aiohttp's URL type, decodes and resolves
    it), and a path that only resolves into the upload folders is refused outright: dot segments, encoded
    slashes or backslashes, or a backslash anywhere.
    """
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        return False
    raw_path = urlsplit(url).path
    return (
        parsed.scheme == "https"
        and parsed.user is None
        and parsed.password is None
        and parsed.explicit_port is None
        and (parsed.host or "") in set(allowed_hosts)
        and _plain_path(raw_path)
        and parsed.path.startswith(CDN_UPLOAD_PATH_PREFIXES)
        and parsed.path == unquote(raw_path)
    )


def _plain_path(raw_path: str) -> bool:
    """A path with nothing for a client to resolve: no dot segments (plain or encoded), no backslashes, no
    encoded slashes."""
    lowered = raw_path.lower()
    if "\\" in raw_path or "%2f" in lowered or "%5c" in lowered:
        return False
    return not any(segment in (".", "..") for segment in unquote(raw_path).split("/"))


def format_megabytes(size: int) -> str:
    """A file size in words people know: "3.2 MB", or "850 KB" for small ones."""
    if size < 1024 * 1024:
        return f"{max(size / 1024, 0.1):.3g} KB"
    return f"{size / (1024 * 1024):.3g} MB"


TOOK_TOO_LONG = T("downloading it took too long")


def larger_than(limit: int) -> Text:
    return T("it is larger than the {limit} limit", limit=format_megabytes(limit))


def check_source(source: ImageSource, limits: ImageLimits) -> None:
    """Reject a file from its metadata alone: wrong place, or declared too big."""
    if source.content_type == LOTTIE_CONTENT_TYPE:
        raise ImageRejected(
            source.filename,
            T("it is an animated vector sticker, which I cannot see; stickers made from a picture work"),
        )
    if not is_discord_upload(source.url, limits.allowed_hosts):
        raise ImageRejected(source.filename, T("I only read files uploaded to Discord"))
    if source.size is not None and source.size > limits.max_bytes:
        raise ImageRejected(
            source.filename,
            T(
                "it is {size}, larger than the {limit} limit",
                size=format_megabytes(source.size),
                limit=format_megabytes(limits.max_bytes),
            ),
        )


def decode_file(
    data: bytes,
    filename: str,
    *,
    max_pixels: int,
    num_crops: int | None = None,
    max_pictures: int = 1,
    pages: Sequence[int] | None = None,
) -> Pictures:
    """Turn file bytes into the pictures the model reads: a picture, pages of a PDF or frames of an animation
    or video (:func:`inference.media.read_file`, the same rules as the command line tool), or raise
    :class:`ImageRejected` naming the file."""
    try:
        return media.read_file(
            data, max_pixels=max_pixels, num_crops=num_crops, max_pictures=max_pictures, pages=pages
        )
    except errors.UnreadableImage as error:
        raise ImageRejected(filename, image_problem_text(error)) from None
    except errors.TooManyImages as error:
        raise ImageRejected(
            filename, T("I read at most {limit} pages of a document at once", limit=error.limit)
        ) from None


def decode_image(data: bytes, filename: str, *, max_pixels: int, num_crops: int | None = None) -> Image.Image:
    """One picture of the file: :func:`decode_file`'s first (a document's first page, a video's middle
    frame)."""
    return decode_file(data, filename, max_pixels=max_pixels, num_crops=num_crops).images[0]


class HttpFetcher:
    """Downloads from the Discord CDN over the bot's own aiohttp session.

    Redirects are not followed (a redirect could lead anywhere), the whole
    download has a time limit, and the size cap is enforced while streaming,
    whatever the server claims.
    """

    def __init__(self, session: aiohttp.ClientSession, *, timeout_s: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        try:
            async with self._session.get(url, allow_redirects=False, timeout=self._timeout) as response:
                if response.status in GONE_STATUSES:
                    raise DownloadError(GONE_REASON)
                if response.status != 200:
                    raise DownloadError(
                        T(
                            "Discord answered HTTP {status} when I tried to download it",
                            status=response.status,
                        )
                    )
                if response.content_length is not None and response.content_length > max_bytes:
                    raise DownloadTooLarge(larger_than(max_bytes))
                buffer = bytearray()
                async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
                    buffer += chunk
                    if len(buffer) > max_bytes:
                        raise DownloadTooLarge(larger_than(max_bytes))
                return bytes(buffer)
        except TimeoutError:
            raise DownloadError(TOOK_TOO_LONG) from None
        except aiohttp.ClientError:
            raise DownloadError(T("it could not be downloaded")) from None


def check_sources(sources: Iterable[ImageSource], limits: ImageLimits) -> None:
    """:func:`check_source` for each, before anything is downloaded."""
    for source in sources:
        check_source(source, limits)


async def fetch_file(
    source: ImageSource,
    limits: ImageLimits,
    fetcher: Fetcher,
    *,
    num_crops: int | None = None,
    max_pictures: int = 1,
) -> Pictures:
    """Download and decode one file that :func:`check_source` accepted: up to ``max_pictures`` pages or
    frames of it. Decoding runs on one of :data:`DECODES_AT_ONCE` threads, so however many files arrive
    together, only that many are held at full size at once."""
    try:
        async with asyncio.timeout(limits.download_timeout_s):
            data = await fetcher.fetch(source.url, max_bytes=limits.max_bytes)
    except TimeoutError:
        raise ImageRejected(source.filename, TOOK_TOO_LONG) from None
    except DownloadError as error:
        raise ImageRejected(source.filename, error.args[0]) from None
    if len(data) > limits.max_bytes:
        raise ImageRejected(source.filename, larger_than(limits.max_bytes))
    decode = functools.partial(
        decode_file,
        data,
        source.filename,
        max_pixels=limits.max_pixels,
        num_crops=num_crops,
        max_pictures=max_pictures,
        pages=source.pages,
    )
    return await asyncio.get_running_loop().run_in_executor(_DECODING, decode)


async def fetch_image(
    source: ImageSource, limits: ImageLimits, fetcher: Fetcher, *, num_crops: int | None = None
) -> Image.Image:
    """One picture of one checked file (:func:`decode_image`)."""
    return (await fetch_file(source, limits, fetcher, num_crops=num_crops)).images[0]


async def fetch_pictures(
    sources: Sequence[ImageSource],
    limits: ImageLimits,
    fetcher: Fetcher,
    *,
    num_crops: int | None = None,
    max_pictures: int = 1,
) -> Pictures:
    """Download and decode checked files one after the other, stopping at the first bad one. One file gives
    up to ``max_pictures`` pages or frames; several (to compare) give one picture each: a document's first
    page, an animation's or a video's middle frame."""
    if len(sources) == 1:
        return await fetch_file(sources[0], limits, fetcher, num_crops=num_crops, max_pictures=max_pictures)
    images = [
        (await fetch_file(source, limits, fetcher, num_crops=num_crops)).images[0] for source in sources
    ]
    return Pictures(tuple(images))


async def load_images(
    sources: Iterable[ImageSource], limits: ImageLimits, fetcher: Fetcher, *, num_crops: int | None = None
) -> tuple[Image.Image, ...]:
    """Check every file's metadata first, then download and decode one picture of each."""
    sources = tuple(sources)
    check_sources(sources, limits)
    return tuple(
        [(await fetch_file(source, limits, fetcher, num_crops=num_crops)).images[0] for source in sources]
    )
