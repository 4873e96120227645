"""One Discord call of a reply, and the retries discord.py does not already make.

Within one call discord.py waits out every 429 itself (this bot sets no ``max_ratelimit_timeout``, so
``RateLimited`` is never raised and has no branch here) and tries 500, 502, 504 and 524 up to five times.
What is left for us, and only for a final state or an acknowledgement (what the person keeps): more tries
once discord.py has given up, that is a 503 (which it never retries) or a burst of 429s or 5xx longer than
its five tries, after the ``Retry-After`` Discord gives or a short back-off. A preview is never retried. A
4xx means the message was deleted, the token expired or a permission was removed: the reply is gone
(:class:`ReplyGone`), and trying again cannot help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import discord

log = logging.getLogger(__name__)

FINAL_ATTEMPTS = 4  # a final state, an acknowledgement: tried this often when discord.py gave up
MAX_RETRY_DELAY_S = 30.0


class ReplyGone(Exception):
    """The reply can no longer be shown (its message was deleted, a permission was removed)."""


def _is_permanent(error: discord.HTTPException) -> bool:
    # Deleted message or webhook, expired token, permission removed, bad request: trying again
    # cannot help.
    return error.status is not None and 400 <= error.status < 500 and error.status != 429


def _worth_retrying(error: discord.HTTPException) -> bool:
    """Discord was busy or failing (429, 5xx): another try later may go through."""
    return error.status is not None and (error.status == 429 or error.status >= 500)


def _retry_delay(error: BaseException, attempt: int) -> float:
    """The wait Discord asked for (``Retry-After``), else a short back-off."""
    delay = None
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    with contextlib.suppress(TypeError, ValueError):
        delay = float(headers.get("Retry-After", ""))
    if delay is None:
        delay = 0.5 * 2**attempt
    return min(max(float(delay), 0.0), MAX_RETRY_DELAY_S)


async def call_discord(
    call: Callable[[], Awaitable[object]], *, attempts: int, on_retry: Callable[[], None] | None = None
) -> bool:
    """Make one Discord call; True if it went through, False if it was given up as transient.

    A 429 or 5xx that discord.py gave up on is tried again (up to ``attempts`` tries in all) after the delay
    Discord gives (``on_retry`` is told of each retry). A permanent failure raises :class:`ReplyGone`;
    any other failure gives the call up at once.
    """
    tries = 0
    while True:
        tries += 1
        try:
            await call()
            return True
        except discord.HTTPException as error:
            if _is_permanent(error):
                raise ReplyGone(f"{error.status} {error.text or ''}".strip()) from error
            if not _worth_retrying(error) or tries >= attempts:
                log.info("Gave up a Discord call after %d tries: %s", tries, error)
                return False
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(_retry_delay(error, tries - 1))
