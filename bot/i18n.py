"""Replies in the reader's language: gettext catalogs kept with Babel, compiled in memory.

The catalogs are ``bot/locales/<language>/LC_MESSAGES/messages.po`` (English is the source; the
others are Vietnamese, Danish and Romanian, the seed languages Discord offers). They are read and
compiled when first needed, so there is no build step and no ``.mo`` file to forget.
``scripts/translations.py`` extracts the texts (``N_`` / ``T`` in the code, and every command name
and description) into ``messages.pot`` and updates the catalogs; tests fail when one is missing.

A person gets private replies in their own Discord language, public messages go out in the
server's preferred language. The model's own answers are never translated.
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
from pathlib import Path

import babel
import discord
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from discord import app_commands

from bot.text import Text

log = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).parent / "locales"
DOMAIN = "messages"
# Discord's locale codes for the languages that have a catalog.
LANGUAGES = {discord.Locale.vietnamese: "vi", discord.Locale.danish: "da", discord.Locale.romanian: "ro"}
COMMAND_CONTEXT = "command"  # msgctxt of command names, descriptions and options


def catalog_path(language: str) -> Path:
    return LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The compiled catalog of a language (English, or one without a catalog: as written)."""
    path = catalog_path(language)
    if not path.exists():
        if language in LANGUAGES.values():  # shipped with the bot: an install that lost it is broken
            log.error(
                "The %s translations are missing (%s): replies in that language stay English", language, path
            )
        return gettext.NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def language_of(locale: discord.Locale | str | None) -> str | None:
    """The catalog for a Discord locale, or None for English (and languages without one)."""
    if locale is None:
        return None
    try:
        return LANGUAGES.get(discord.Locale(str(locale)))
    except ValueError:
        return None


def language_name(locale: discord.Locale | str | None) -> str | None:
    """A Discord locale's language named in English for the model ("Vietnamese", "Portuguese (Brazil)"), or
    None for English and for no locale (the model answers in English unless told otherwise)."""
    if locale is None or str(locale).startswith("en"):
        return None
    try:
        return babel.Locale.parse(str(locale), sep="-").get_display_name("en")
    except (ValueError, babel.UnknownLocaleError):
        return None


def render(text: str | Text, locale: discord.Locale | str | None) -> str:
    """A text for people in the language of ``locale``; anything not in the catalog stays English."""
    language = language_of(locale)
    if not isinstance(text, Text):
        return translations(language).gettext(text) if language else text
    template = translations(language).gettext(text.template) if language else text.template
    values = {
        name: render(value, locale) if isinstance(value, Text) else value
        for name, value in text.values.items()
    }
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):  # a broken translation must not hide the message
        return text.template.format(**values)


def text_of(error: BaseException) -> str | Text:
    """What an exception says to people: its :class:`Text` if it carries one, else its words."""
    first = error.args[0] if error.args else None
    return first if isinstance(first, Text) else str(error)


class CatalogTranslator(app_commands.Translator):
    """Command names, descriptions and options in each language Discord shows them in."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        language = language_of(locale)
        if language is None:
            return None
        translated = translations(language).pgettext(COMMAND_CONTEXT, string.message)
        return translated if translated != string.message else None
