"""Shared fixtures: a real bot wired to a fake engine, driven through simcord.

``make_bot(engine=..., **settings_overrides)`` builds the real bot; end-to-end
tests can pass a real ``LocalEngine`` (with ``manage_engine=False`` when the
test starts and stops the engine itself). Per-test settings go through the
``bot_settings`` marker::

    @pytest.mark.bot_settings(ocr_public=True)
    async def test_something(simcord_env, world): ...
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from bot.app import VisionBot, create_bot
from bot.settings import DISCORD_CDN_HOSTS, Settings
from tests.fakes import FakeEngine, SimcordCdnFetcher

SIMCORD_CDN_HOST = "cdn.simcord.invalid"

TEST_SETTINGS = Settings(
    user_cooldown_s=0,
    max_jobs_per_user=2,
    cdn_hosts=DISCORD_CDN_HOSTS | {SIMCORD_CDN_HOST},
    database_path=":memory:",
)


@pytest.fixture(autouse=True, scope="session")
def hf_home(tmp_path_factory):
    """What is kept beside the Hugging Face cache (the tiny checkpoint's 8-bit weights, rounded at each first
    load on a CPU) goes to a folder of the test run's, here and in the processes the tests start."""
    from huggingface_hub import constants

    home = tmp_path_factory.mktemp("hf-home")
    before_env, before = os.environ.get("HF_HOME"), constants.HF_HOME
    os.environ["HF_HOME"], constants.HF_HOME = str(home), str(home)
    yield home
    constants.HF_HOME = before
    if before_env is None:
        os.environ.pop("HF_HOME", None)
    else:
        os.environ["HF_HOME"] = before_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bot_settings(**overrides): Settings fields for the simcord_bot fixture"
    )


def make_settings(**overrides: Any) -> Settings:
    return Settings(**{**dict(TEST_SETTINGS), **overrides})


def image_bytes(
    size: tuple[int, int] = (32, 24),
    *,
    color: tuple[int, ...] | str = (200, 30, 30),
    format: str = "PNG",
    mode: str = "RGB",
    **save_options: Any,
) -> bytes:
    """A small image file made in memory."""
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=format, **save_options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header but holds (almost) no pixel data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_bot(fake_engine: FakeEngine) -> Callable[..., VisionBot]:
    def factory(engine: Any = None, *, manage_engine: bool = True, **overrides: Any) -> VisionBot:
        bot: VisionBot
        fetcher = SimcordCdnFetcher(lambda: bot.http)
        bot = create_bot(
            make_settings(**overrides),
            engine if engine is not None else fake_engine,
            fetcher=fetcher,
            manage_engine=manage_engine,
        )
        return bot

    return factory


@pytest.fixture
async def simcord_bot(
    make_bot: Callable[..., VisionBot], request: pytest.FixtureRequest
) -> AsyncIterator[VisionBot]:
    marker = request.node.get_closest_marker("bot_settings")
    bot = make_bot(**(marker.kwargs if marker else {}))
    yield bot
    # simcord detaches the bot but does not close it; close it so its aiohttp session is released.
    await bot.close()


@dataclass
class World:
    """A guild with one text channel and one ordinary member, for most tests."""

    env: Any
    guild: Any
    channel: Any
    member: Any


@pytest.fixture
def world(simcord_env: Any) -> World:
    guild = simcord_env.create_guild("Test Guild")
    channel = guild.create_text_channel("general")
    member = guild.add_member(simcord_env.create_user("alice"))
    return World(simcord_env, guild, channel, member)


CHANNEL_MESSAGE = 4  # an interaction answered at once with a message (the working text and its Stop button)


def first_responses(env: Any) -> list[tuple[int, bool]]:
    """Each interaction response the bot sent: (Discord's response type, whether it was ephemeral)."""
    return [
        (entry.json["type"], bool(entry.json.get("data", {}).get("flags", 0) & 64))
        for entry in env.http_requests
        if entry.path.endswith("/callback") and isinstance(entry.json, dict)
    ]


def acknowledge_errors(env: Any) -> list[type[BaseException]]:
    """The root types of the errors the bot reported (and told the user about), in order.

    simcord re-raises errors the bot handled at teardown unless the test looked
    at them; reading ``env.errors`` acknowledges them.
    """
    from bot.errors import unwrap

    return [type(unwrap(error)) for error in env.errors]


def reconfigure(bot: VisionBot, **overrides: Any) -> None:
    """Change settings of a running bot (for values only known once the world exists, like channel IDs)."""
    from bot.limits import AccessPolicy, JobLimiter

    bot.settings = Settings(**{**dict(bot.settings), **overrides})
    bot.access = AccessPolicy.from_settings(bot.settings)
    bot.limiter = JobLimiter.from_settings(bot.settings)


def bot_messages(channel: Any) -> list[Any]:
    """Messages the bot posted in a channel, oldest first."""
    return [message for message in channel.history() if message.author.bot and not message.webhook_id]


@pytest.fixture
def interaction_payload(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fields to change in the interactions simcord sends (it always says: installed in the server,
    en-US). A value may be a function of the payload. Only the simulator's side is changed."""
    import simcord.interactions

    changes: dict[str, Any] = {}
    original = simcord.interactions.base_payload

    def changed(*args: Any, **kwargs: Any) -> Any:
        record, payload = original(*args, **kwargs)
        for key, value in changes.items():
            payload[key] = value(payload) if callable(value) else value
        return record, payload

    monkeypatch.setattr(simcord.interactions, "base_payload", changed)
    return changes
