"""Attachment intake: source checks, decoding, and the production HTTP fetcher."""

from __future__ import annotations

import asyncio
import io
import warnings

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from bot.errors import ImageRejected
from bot.images import (
    DownloadError,
    DownloadTooLarge,
    HttpFetcher,
    ImageLimits,
    ImageSource,
    check_source,
    decode_image,
    fetch_image,
    is_discord_upload,
    load_images,
)
from inference.images import DRAFT_TARGET_SIDE
from tests.conftest import image_bytes, png_header_only

MAX_PIXELS = 1_000_000
CDN_URL = "https://cdn.discordapp.com/attachments/1/2/cat.png"
LIMITS = ImageLimits(
    max_bytes=100_000,
    max_pixels=MAX_PIXELS,
    allowed_hosts=frozenset({"cdn.discordapp.com", "media.discordapp.net"}),
    download_timeout_s=5,
)


# ---------------------------------------------------------------- check_source


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.discordapp.com/attachments/1/2/a.png",
        "https://media.discordapp.net/attachments/1/2/a.png?width=100",
        "https://cdn.discordapp.com/ephemeral-attachments/1/2/a.png",
    ],
)
def test_discord_upload_urls_are_accepted(url):
    assert is_discord_upload(url, LIMITS.allowed_hosts)


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.discordapp.com/attachments/1/2/a.png",  # not https
        "https://evil.example/attachments/1/2/a.png",
        "https://cdn.discordapp.com.evil.example/attachments/1/2/a.png",
        "https://media.discordapp.net/external/abc/https/evil.example/a.png",  # a proxied user link
        "https://cdn.discordapp.com/avatars/1/abc.png",
        "file:///etc/passwd",
        "not a url",
        # Paths that the HTTP client would resolve out of the upload folders, or that hide their shape
        "https://cdn.discordapp.com/attachments/../avatars/1/a.png",
        "https://cdn.discordapp.com/attachments/%2e%2e/avatars/1/a.png",
        "https://cdn.discordapp.com/attachments/%2E%2E/avatars/1/a.png",
        "https://cdn.discordapp.com/attachments/1/./2/a.png",
        "https://cdn.discordapp.com/attachments/1%2f..%2f..%2favatars/a.png",
        "https://cdn.discordapp.com/attachments/1%5c2/a.png",
        "https://cdn.discordapp.com/attachments\\..\\avatars/1/a.png",
        "https://user:pass@cdn.discordapp.com/attachments/1/2/a.png",
        "https://cdn.discordapp.com:8443/attachments/1/2/a.png",
    ],
)
def test_other_urls_are_refused(url):
    assert not is_discord_upload(url, LIMITS.allowed_hosts)
    with pytest.raises(ImageRejected, match="only read files uploaded to Discord"):
        check_source(ImageSource("a.png", url, size=10), LIMITS)


def test_declared_size_over_the_limit_is_refused_before_download():
    with pytest.raises(ImageRejected) as caught:
        check_source(ImageSource("big.png", CDN_URL, size=LIMITS.max_bytes + 1), LIMITS)
    assert "big.png" in str(caught.value)
    assert "larger than" in str(caught.value)


# ---------------------------------------------------------------- decode_image


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_every_allowed_format_decodes_to_rgb(format):
    image = decode_image(image_bytes((40, 30), format=format), f"x.{format.lower()}", max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.size == (40, 30)


def test_format_is_sniffed_from_content_not_name():
    image = decode_image(image_bytes(format="PNG"), "photo.jpg", max_pixels=MAX_PIXELS)
    assert image.size == (32, 24)


@pytest.mark.parametrize(
    "data",
    [b"hello, world", image_bytes(format="TIFF")],
    ids=["text", "tiff"],
)
def test_non_images_and_unlisted_formats_are_refused_by_name(data):
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, "notes.txt", max_pixels=MAX_PIXELS)
    assert caught.value.filename == "notes.txt"
    assert "not an image I can read" in str(caught.value)


def test_a_damaged_pdf_is_said_to_be_damaged():
    with pytest.raises(ImageRejected) as caught:
        decode_image(b"%PDF-1.7\n" + b"0" * 100, "scan.pdf", max_pixels=MAX_PIXELS)
    assert caught.value.filename == "scan.pdf"
    assert "damaged or incomplete" in str(caught.value)


def test_an_empty_file_is_said_to_be_empty():
    with pytest.raises(ImageRejected) as caught:
        decode_image(b"", "empty.png", max_pixels=MAX_PIXELS)
    assert caught.value.filename == "empty.png" and "the file is empty" in str(caught.value)


def test_truncated_file_is_refused_as_damaged():
    data = image_bytes((200, 200), format="JPEG", color="blue")
    with pytest.raises(ImageRejected, match="damaged or incomplete"):
        decode_image(data[: len(data) // 2], "half.jpg", max_pixels=MAX_PIXELS)


def test_pixel_cap_is_checked_from_the_header_before_decoding():
    with pytest.raises(ImageRejected) as caught:
        decode_image(png_header_only(2000, 2000), "huge.png", max_pixels=MAX_PIXELS)
    assert "2000×2000 pixels" in str(caught.value)
    assert f"{MAX_PIXELS:,}" in str(caught.value)


def test_decompression_bomb_far_past_pillows_limit_is_refused():
    with pytest.raises(ImageRejected, match="far too many pixels"):
        decode_image(png_header_only(50_000, 50_000), "bomb.png", max_pixels=MAX_PIXELS)


def test_image_between_pillows_warning_and_error_limits_is_refused_by_our_cap_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail the test
        with pytest.raises(ImageRejected, match="pixels"):
            decode_image(png_header_only(10_000, 10_000), "bomb.png", max_pixels=MAX_PIXELS)


def test_pillow_global_limit_is_left_alone():
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageRejected):
        decode_image(image_bytes(), "a.png", max_pixels=10)
    assert before == Image.MAX_IMAGE_PIXELS


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = image_bytes((40, 20), format="JPEG", exif=exif.tobytes())
    assert decode_image(data, "phone.jpg", max_pixels=MAX_PIXELS).size == (20, 40)


def test_transparency_is_composited_on_white():
    data = image_bytes((10, 10), mode="RGBA", color=(255, 0, 0, 0))
    image = decode_image(data, "clear.png", max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_half_transparent_pixels_blend_with_white():
    data = image_bytes((4, 4), mode="RGBA", color=(0, 0, 0, 128))
    red, green, blue = decode_image(data, "half.png", max_pixels=MAX_PIXELS).getpixel((1, 1))
    assert 120 <= red <= 135 and red == green == blue


def test_palette_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] * 256)
    buffer = io.BytesIO()
    image.save(buffer, format="GIF", transparency=0)
    decoded = decode_image(buffer.getvalue(), "clear.gif", max_pixels=MAX_PIXELS)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_one_picture_of_an_animated_gif_is_its_middle_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "lime", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    red, green, blue = decode_image(buffer.getvalue(), "anim.gif", max_pixels=MAX_PIXELS).getpixel((8, 8))
    assert red < 50 and green > 200 and blue < 50


def test_large_jpeg_is_decoded_at_reduced_scale():
    data = image_bytes((6000, 400), format="JPEG", color="gray")
    image = decode_image(data, "wide.jpg", max_pixels=10_000_000)
    assert DRAFT_TARGET_SIDE <= image.width < 6000
    assert image.width / image.height == pytest.approx(15, rel=0.05)


def test_small_jpeg_keeps_its_size():
    assert decode_image(image_bytes((800, 600), format="JPEG"), "a.jpg", max_pixels=MAX_PIXELS).size == (
        800,
        600,
    )


# ---------------------------------------------------------------- fetch_image


class DictFetcher:
    def __init__(self, files: dict[str, bytes], delay_s: float = 0) -> None:
        self.files = files
        self.delay_s = delay_s
        self.calls: list[str] = []

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        self.calls.append(url)
        await asyncio.sleep(self.delay_s)
        data = self.files[url]
        if len(data) > max_bytes:
            raise DownloadTooLarge("it is larger than the limit")
        return data


async def test_load_image_downloads_and_decodes():
    fetcher = DictFetcher({CDN_URL: image_bytes()})
    image = await fetch_image(ImageSource("cat.png", CDN_URL), LIMITS, fetcher)
    assert image.size == (32, 24)


async def test_load_image_names_the_file_when_the_download_fails():
    class Failing:
        async def fetch(self, url: str, *, max_bytes: int) -> bytes:
            raise DownloadError("Discord answered HTTP 404 when I tried to download it")

    with pytest.raises(ImageRejected, match=r"cat\.png.*HTTP 404"):
        await fetch_image(ImageSource("cat.png", CDN_URL), LIMITS, Failing())


async def test_load_image_times_out():
    limits = ImageLimits(LIMITS.max_bytes, MAX_PIXELS, LIMITS.allowed_hosts, download_timeout_s=0.01)
    with pytest.raises(ImageRejected, match="took too long"):
        await fetch_image(ImageSource("slow.png", CDN_URL), limits, DictFetcher({CDN_URL: b""}, delay_s=1))


async def test_load_image_enforces_size_even_if_the_fetcher_does_not():
    class Careless:
        async def fetch(self, url: str, *, max_bytes: int) -> bytes:
            return b"x" * (max_bytes + 1)

    with pytest.raises(ImageRejected, match="larger than"):
        await fetch_image(ImageSource("cat.png", CDN_URL), LIMITS, Careless())


async def test_load_images_checks_every_source_before_downloading_any():
    fetcher = DictFetcher({CDN_URL: image_bytes()})
    sources = [
        ImageSource("ok.png", CDN_URL),
        ImageSource("bad.png", "https://evil.example/attachments/a.png"),
    ]
    with pytest.raises(ImageRejected, match="bad.png"):
        await load_images(sources, LIMITS, fetcher)
    assert fetcher.calls == []


# ---------------------------------------------------------------- HttpFetcher


@pytest.fixture
async def cdn_server():
    payload = image_bytes()

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="image/png")

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: the cap must hold while streaming
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 10_000)
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("https://evil.example/a.png")

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(body=payload)

    app = web.Application()
    app.add_routes(
        [
            web.get("/file", file),
            web.get("/big", big),
            web.get("/redirect", redirect),
            web.get("/missing", missing),
            web.get("/slow", slow),
        ]
    )
    server = TestServer(app)
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield server, session, payload
    await server.close()


async def test_http_fetcher_downloads(cdn_server):
    server, session, payload = cdn_server
    data = await HttpFetcher(session, timeout_s=5).fetch(str(server.make_url("/file")), max_bytes=100_000)
    assert data == payload


async def test_http_fetcher_stops_reading_past_the_cap(cdn_server):
    server, session, _ = cdn_server
    with pytest.raises(DownloadTooLarge):
        await HttpFetcher(session, timeout_s=5).fetch(str(server.make_url("/big")), max_bytes=50_000)


async def test_http_fetcher_refuses_a_declared_size_over_the_cap(cdn_server):
    server, session, _ = cdn_server
    with pytest.raises(DownloadTooLarge):
        await HttpFetcher(session, timeout_s=5).fetch(str(server.make_url("/file")), max_bytes=10)


async def test_http_fetcher_does_not_follow_redirects(cdn_server):
    server, session, _ = cdn_server
    with pytest.raises(DownloadError, match="HTTP 302"):
        await HttpFetcher(session, timeout_s=5).fetch(str(server.make_url("/redirect")), max_bytes=100_000)


async def test_http_fetcher_says_a_deleted_or_expired_file_is_gone(cdn_server):
    server, session, _ = cdn_server
    with pytest.raises(DownloadError, match="no longer on Discord"):
        await HttpFetcher(session, timeout_s=5).fetch(str(server.make_url("/missing")), max_bytes=100_000)


async def test_http_fetcher_times_out(cdn_server):
    server, session, _ = cdn_server
    with pytest.raises(DownloadError, match="too long"):
        await HttpFetcher(session, timeout_s=0.05).fetch(str(server.make_url("/slow")), max_bytes=100_000)
