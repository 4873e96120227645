"""``python -m bot``: clear one-line messages for setup problems, and a clean exit."""

from __future__ import annotations

import aiohttp
import discord

import bot.__main__ as entry
from tests.conftest import make_settings
from tests.fakes import FakeEngine


def test_missing_token_prints_one_clear_line(capsys):
    assert entry.main({}) == entry.EXIT_CONFIG

    err = capsys.readouterr().err
    assert err.strip() == entry.MISSING_TOKEN_TEXT
    assert "DISCORD_TOKEN" in err and ".env" in err
    assert "Traceback" not in err


def test_bad_setting_prints_what_is_wrong(capsys):
    assert entry.main({"DISCORD_TOKEN": "x", "QUANTIZATION": "2bit"}) == entry.EXIT_CONFIG

    err = capsys.readouterr().err.strip()
    assert err.startswith("Configuration error: QUANTIZATION='2bit' is not valid")
    assert "\n" not in err


def bot_whose_login_fails(monkeypatch, engine: FakeEngine, error: BaseException) -> list:
    built = []

    def fake_create_bot(settings):
        from bot.app import create_bot

        bot = create_bot(make_settings(discord_token=settings.discord_token), engine)

        async def refuse(token: str) -> None:
            raise error

        bot.http.static_login = refuse
        built.append(bot)
        return bot

    monkeypatch.setattr(entry, "create_bot", fake_create_bot)
    monkeypatch.setattr(entry, "configure_logging", lambda level: None)
    return built


def test_no_connection_to_discord_prints_one_clear_line(capsys, monkeypatch):
    engine = FakeEngine()
    built = bot_whose_login_fails(
        monkeypatch, engine, aiohttp.ClientConnectionError("Name or service not known")
    )

    assert entry.main({"DISCORD_TOKEN": "token"}) == entry.EXIT_STARTUP

    err = capsys.readouterr().err.strip()
    assert err.startswith(entry.NO_CONNECTION_TEXT) and "\n" not in err
    assert built[0].is_closed()


def test_a_rejected_token_prints_one_clear_line(capsys, monkeypatch):
    engine = FakeEngine()
    built = bot_whose_login_fails(
        monkeypatch, engine, discord.LoginFailure("Improper token has been passed.")
    )

    assert entry.main({"DISCORD_TOKEN": "not-a-real-token"}) == entry.EXIT_CONFIG

    err = capsys.readouterr().err
    assert err.strip() == entry.INVALID_TOKEN_TEXT
    assert "not-a-real-token" not in err
    assert built[0].is_closed()
    assert not engine.started
