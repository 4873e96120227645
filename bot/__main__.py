"""``python -m bot``: read the settings, load the model, connect to Discord, run until stopped.

python -m bot                     run the bot (settings from the environment and ./.env)
python -m bot --env-file FILE     read the settings from FILE instead of ./.env
python -m bot --check             check settings, token, model and device without connecting
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping

import aiohttp
import discord

from bot.app import VisionBot, create_bot
from bot.database import DatabaseUnavailable
from bot.log_context import RequestIdFilter
from bot.settings import Settings, SettingsError, unknown_names
from inference import InferenceError
from inference.process import exit_process

log = logging.getLogger("bot")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_CHECK_FAILED = 1
LOG_FORMAT = "%(asctime)s %(levelname)-8s %(name)s [%(request)s]: %(message)s"
MISSING_TOKEN_TEXT = (
    "DISCORD_TOKEN is not set. Copy .env.example to .env and put your bot's token after DISCORD_TOKEN= "
    "(Discord Developer Portal > your application > Bot > Reset Token)."
)
INVALID_TOKEN_TEXT = (
    "Discord rejected DISCORD_TOKEN. Put a valid bot token in .env "
    "(Discord Developer Portal > your application > Bot > Reset Token)."
)
NO_CONNECTION_TEXT = "Could not reach Discord: check this machine's internet connection and try again."
MISSING_INTENT_TEXT = (
    "Discord refused the Message Content intent. Enable it in the Developer Portal "
    "(Bot > Privileged Gateway Intents), or set COMMAND_PREFIX= (blank) to use mentions "
    "and slash commands only."
)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())  # "[i123…]": the request a line belongs to
    # discord.py's gateway chatter is noisy at DEBUG, the openai client's DEBUG lines carry whole request
    # bodies (people's images) and aiosqlite's every SQL statement with its parameters (answers, private OCR
    # text, signed file links): all stay at INFO (which has the client's retries) at any LOG_LEVEL.
    for noisy in ("discord", "openai", "httpx2", "httpcore2", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))


async def run(bot: VisionBot, token: str) -> None:
    """Run until the connection ends, Ctrl-C, or SIGTERM; always close cleanly."""
    loop = asyncio.get_running_loop()
    closing: set[asyncio.Task[None]] = set()  # keeps the close task referenced until it is done

    def on_sigterm() -> None:
        task = loop.create_task(bot.close())
        closing.add(task)
        task.add_done_callback(closing.discard)

    with contextlib.suppress(NotImplementedError):  # not available on Windows
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    async with bot:
        await bot.start(token)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="A Discord bot that describes, reads (OCR) and compares images with Phi-3-vision. "
        "Every setting is in .env.example and the README.",
    )
    parser.add_argument("--env-file", metavar="FILE", help="read the settings from FILE instead of ./.env")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the settings, the token's shape, the model download and the device, without connecting "
        "to Discord; exit 0 when the bot can start",
    )
    parser.add_argument(
        "--no-device",
        action="store_true",
        help="with --check: leave out the device (for a health check while the bot itself holds the GPU)",
    )
    return parser.parse_args(argv)


def check(settings: Settings, *, device: bool = True, unknown: list[str] | None = None) -> int:
    from bot.doctor import run_checks

    findings = run_checks(settings, device=device, unknown_names=unknown or [])
    for finding in findings:
        print(finding.line())
    failed = sum(finding.verdict == "fail" for finding in findings)
    warned = sum(finding.verdict == "warn" for finding in findings)
    if failed:
        print(f"Not ready: {failed} problem{'s' if failed > 1 else ''} above.")
    elif warned:
        print(f"Ready to start, with {warned} warning{'s' if warned > 1 else ''} above.")
    else:
        print("Ready to start.")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def main(environ: Mapping[str, str] | None = None, argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code. Prints one clear line for setup problems."""
    args = parse_args([] if argv is None else argv)
    try:
        settings = Settings.from_env(environ, env_file=args.env_file)
        unknown = unknown_names(environ, env_file=args.env_file)
    except SettingsError as error:
        for problem in error.problems:
            print(f"Configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        return check(settings, device=not args.no_device, unknown=unknown)
    if not settings.discord_token:
        print(MISSING_TOKEN_TEXT, file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    for line in unknown:
        log.warning("Settings: %s", line)
    bot = create_bot(settings)
    try:
        asyncio.run(run(bot, settings.discord_token.get_secret_value()))
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return EXIT_OK  # Ctrl-C is how the bot is meant to be stopped
    except discord.LoginFailure:
        print(INVALID_TOKEN_TEXT, file=sys.stderr)
        return EXIT_CONFIG
    except discord.PrivilegedIntentsRequired:
        print(MISSING_INTENT_TEXT, file=sys.stderr)
        return EXIT_CONFIG
    except InferenceError as error:
        print(f"Could not start the model: {error}", file=sys.stderr)
        return EXIT_STARTUP
    except DatabaseUnavailable as error:
        print(str(error), file=sys.stderr)
        return EXIT_STARTUP
    except (aiohttp.ClientConnectionError, discord.GatewayNotFound, OSError) as error:
        print(f"{NO_CONNECTION_TEXT} ({error.__class__.__name__}: {error})", file=sys.stderr)
        return EXIT_STARTUP
    return EXIT_OK


def cli() -> None:
    """The ``phi3v-bot`` console script: ``python -m bot`` under a shorter name."""
    exit_process(main(argv=sys.argv[1:]))


if __name__ == "__main__":
    cli()
