"""Keep the translation catalogs in step with the code (Babel).

    python scripts/translations.py          # write bot/locales/messages.pot, update every messages.po
    python scripts/translations.py --check  # exit 1 if a catalog lacks a text or a translation

The texts are every ``N_("...")`` and ``T("...")`` in bot/ and cogs/, and every command
name, description, option and choice in the command tree (msgctxt "command"). New texts arrive in
each catalog untranslated; `make translations` then lists what is left to translate. Tests run the
same check.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.i18n import COMMAND_CONTEXT, DOMAIN, LANGUAGES, LOCALES_DIR, catalog_path  # noqa: E402

SOURCE_DIRS = ("bot", "cogs")
KEYWORDS = {"N_": None, "T": None}  # the first argument of each is the English text


def code_texts() -> dict[str, list[tuple[str, int]]]:
    """Each text in the code, with where it is (file, line)."""
    found: dict[str, list[tuple[str, int]]] = {}
    for folder in SOURCE_DIRS:
        for filename, line, message, _comments, _context in extract_from_dir(
            ROOT / folder, method_map=[("**.py", "python")], keywords=KEYWORDS, comment_tags=()
        ):
            if isinstance(message, str) and message:
                found.setdefault(message, []).append((f"{folder}/{filename}", line))
    return found


async def command_texts() -> list[str]:
    """Every name, description, option and choice the command tree sends to Discord."""
    import discord
    from discord import app_commands

    async with _loaded_bot() as bot:
        seen: dict[str, None] = {}

        class Recorder(app_commands.Translator):
            async def translate(self, string, locale, context):  # type: ignore[override]
                seen.setdefault(string.message, None)
                return None

        recorder = Recorder()
        for command in bot.tree.get_commands():
            await command.get_translated_payload(bot.tree, recorder)
        for kind in (discord.AppCommandType.message, discord.AppCommandType.user):
            for menu in bot.tree.get_commands(type=kind):
                await menu.get_translated_payload(bot.tree, recorder)
        return list(seen)


class _NoEngine:
    """Enough of an engine for the bot to load its commands; it never answers."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _loaded_bot():
    from contextlib import asynccontextmanager

    from bot.app import create_bot
    from bot.settings import Settings

    @asynccontextmanager
    async def loaded() -> AsyncIterator:
        bot = create_bot(
            Settings(database_path=":memory:", sync_commands=False), _NoEngine(), manage_engine=False
        )
        await bot.setup_hook()
        try:
            yield bot
        finally:
            await bot.close()

    return loaded()


def template() -> Catalog:
    catalog = Catalog(project="phi3v-discord-bot", domain=DOMAIN, fuzzy=False)
    for text, places in sorted(code_texts().items()):
        catalog.add(text, locations=places)
    for text in asyncio.run(command_texts()):
        catalog.add(text, context=COMMAND_CONTEXT)
    return catalog


def missing(language: str, pot: Catalog) -> list[str]:
    """The texts of ``pot`` the language's catalog lacks or has not translated."""
    path = catalog_path(language)
    if not path.exists():
        return [message.id for message in pot if message.id]
    with path.open("rb") as file:
        catalog = read_po(file, locale=language)
    gaps = []
    for message in pot:
        if not message.id:
            continue
        have = catalog.get(message.id, context=message.context)
        if have is None or not have.string or have.fuzzy:
            gaps.append(f"{message.context + ': ' if message.context else ''}{message.id}")
    return gaps


def update(pot: Catalog) -> None:
    LOCALES_DIR.mkdir(parents=True, exist_ok=True)
    with (LOCALES_DIR / f"{DOMAIN}.pot").open("wb") as file:
        write_po(file, pot, width=100)
    for language in LANGUAGES.values():
        path = catalog_path(language)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("rb") as file:
                catalog = read_po(file, locale=language)
        else:
            catalog = Catalog(locale=language, domain=DOMAIN, project="phi3v-discord-bot")
        catalog.update(pot, no_fuzzy_matching=True)
        catalog.fuzzy = False  # the header; each message's own flag is what counts
        catalog.last_translator = "phi3v-discord-bot maintainers"
        catalog.language_team = f"{language} (see README, Languages)"
        with path.open("wb") as file:
            write_po(file, catalog, width=100, omit_header=False, ignore_obsolete=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a text is missing")
    args = parser.parse_args(argv)
    pot = template()
    if not args.check:
        update(pot)
    gaps = {language: missing(language, pot) for language in LANGUAGES.values()}
    for language, texts in gaps.items():
        for text in texts:
            print(f"{language}: not translated: {text}")
    print(f"{len(pot)} texts; " + ", ".join(f"{lang}: {len(texts)} missing" for lang, texts in gaps.items()))
    return 1 if any(gaps.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
