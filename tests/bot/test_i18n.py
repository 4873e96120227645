"""Languages: every text people see is in every catalog, and renders in Vietnamese, Danish, Romanian."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
import string
import sys
from pathlib import Path

import discord
import pytest
from babel.messages.pofile import read_po

from bot.i18n import COMMAND_CONTEXT, LANGUAGES, catalog_path, render
from bot.text import Text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import translations  # noqa: E402  (scripts/translations.py)

LOCALES = [discord.Locale.vietnamese, discord.Locale.danish, discord.Locale.romanian]
# Discord's rule for command and option names (lower case where the script has case).
COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")
TEXT_NAME = re.compile(r"(_TEXT|_LABEL|_TITLE|_PLACEHOLDER|_NOTE|MACHINE_WRITTEN|FORMAT_HELP|_MARK)$")
# Not said on Discord: the owner's terminal (start-up lines, --check) and the model's own prompts.
NOT_FOR_DISCORD = {"bot.__main__", "bot.doctor", "inference.__main__", "inference.prompts"}


def catalog(language: str):
    with catalog_path(language).open("rb") as file:
        return read_po(file, locale=language)


@pytest.fixture(scope="module")
def template():
    return translations.template()


def fields(text: str) -> set[str]:
    return {field for _, field, spec, _ in string.Formatter().parse(text) if field is not None}


def test_every_text_is_translated_in_every_catalog(template):
    """Fails when a text for people was added or changed and a catalog has not caught up."""
    gaps = {language: translations.missing(language, template) for language in LANGUAGES.values()}
    assert gaps == {language: [] for language in LANGUAGES.values()}, (
        "run `make translations` and translate what it lists"
    )


def test_every_text_constant_is_in_the_catalogs(template):
    """A constant for people written without N_() would stay English: every one must be a msgid."""
    known = {message.id for message in template if not message.context}
    unmarked = []
    for package in ("bot", "cogs", "inference"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            if info.name in NOT_FOR_DISCORD:
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if not TEXT_NAME.search(name):
                    continue
                text = value.template if isinstance(value, Text) else value
                if isinstance(text, str) and text not in known:
                    unmarked.append(f"{info.name}.{name}")
    assert unmarked == []


@pytest.mark.parametrize("language", LANGUAGES.values())
def test_translations_keep_every_placeholder(language):
    for message in catalog(language):
        if message.id and message.string:
            assert fields(message.string) == fields(message.id), (language, message.id)


@pytest.mark.parametrize("locale", LOCALES)
def test_every_reply_renders_in_each_language(locale, template):
    samples = {"count": 3, "limit": 4, "seconds": 12.0, "minimum": 2, "maximum": 5, "floor": 10.0, "days": 30}
    for message in template:
        if not message.id or message.context:
            continue
        values = {name: samples.get(name, 7) for name in fields(message.id)}
        rendered = render(Text(message.id, values), locale)
        translated = catalog(LANGUAGES[locale]).get(message.id).string
        assert rendered == translated.format(**values)  # the catalog's words, with the values in


@pytest.mark.parametrize("language", LANGUAGES.values())
def test_translated_command_names_are_valid_for_discord(language, template):
    translated = catalog(language)
    names = set(translations.asyncio.run(command_names()))
    for message in template:
        if message.context != COMMAND_CONTEXT:
            continue
        text = translated.get(message.id, context=COMMAND_CONTEXT).string
        if message.id in names:
            assert COMMAND_NAME.match(text) and text == text.lower(), (language, message.id, text)
        else:
            assert len(text) <= 100, (language, message.id)


async def command_names() -> list[str]:
    """The names among the command strings (descriptions and choice names have spaces or capitals)."""
    async with translations._loaded_bot() as bot:
        found = []
        for command in bot.tree.walk_commands():
            found.append(command.name)
            found += [parameter.name for parameter in getattr(command, "parameters", [])]
        return found


def test_english_and_unknown_locales_read_as_written():
    assert render(
        "Looking at it… \N{LEFT-POINTING MAGNIFYING GLASS}", discord.Locale.american_english
    ).startswith("Looking")
    assert render(Text("Stopped by {name}.", {"name": "x"}), "fr") == "Stopped by x."
    assert render(Text("Stopped by {name}.", {"name": "x"}), None) == "Stopped by x."


def test_a_missing_shipped_catalog_is_an_error_in_the_log_not_silence(monkeypatch, tmp_path, caplog):
    from bot import i18n
    from bot.engine_errors import BUSY_TEXT

    monkeypatch.setattr(i18n, "LOCALES_DIR", tmp_path)  # as an install that lost its package data
    i18n.translations.cache_clear()
    try:
        with caplog.at_level(logging.ERROR, logger="bot.i18n"):
            assert i18n.render(BUSY_TEXT, "vi") == str(BUSY_TEXT)  # English, still readable
    finally:
        i18n.translations.cache_clear()
    [record] = caplog.records
    assert record.getMessage().startswith("The vi translations are missing")


def test_a_locale_is_named_in_english_for_the_model():
    from bot.i18n import language_name

    assert language_name("vi") == "Vietnamese"
    assert language_name(discord.Locale.brazil_portuguese) == "Portuguese (Brazil)"
    assert language_name("en-US") is None and language_name(None) is None
