"""An answer's text cut into Discord messages: at most 2,000 characters each, OCR inside code blocks,
and no live link in any of them (:mod:`bot.safe_text`).

Pure functions, no Discord calls: :mod:`bot.reply` decides when and where the parts are shown.
"""

from __future__ import annotations

from bot.safe_text import without_live_links
from bot.text import N_

MESSAGE_LIMIT = 2000
CODE_FENCE = "```"
ESCAPED_CODE_FENCE = "`\u200b``"  # a zero-width space keeps ``` inside a code block from closing it
CODE_BLOCK_OVERHEAD = len(CODE_FENCE + "\n") + len("\n" + CODE_FENCE)
EMPTY_ANSWER_TEXT = N_("(The model gave an empty answer.)")
NO_TEXT_FOUND_TEXT = N_("(No text found.)")


def escape_code_fences(text: str) -> str:
    return text.replace(CODE_FENCE, ESCAPED_CODE_FENCE)


def split_text(text: str, limit: int) -> list[str]:
    """Split into pieces of at most ``limit`` characters, on line breaks where possible.

    A single line longer than ``limit`` is cut at its last space that fits, or
    hard at ``limit`` when it has none.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if current:
                parts.append(current)
                current = ""
            cut = line.rfind(" ", 0, limit)
            cut = cut + 1 if cut > 0 else limit
            parts.append(line[:cut])
            line = line[cut:]
        if len(current) + len(line) > limit:
            parts.append(current)
            current = line
        else:
            current += line
    if current:
        parts.append(current)
    cleaned = [part.rstrip("\n") for part in parts]
    return [part for part in cleaned if part.strip()]


def format_answer(text: str, *, code_block: bool, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The messages to send for an answer: each under ``limit``, OCR text inside code blocks."""
    if code_block:
        body = escape_code_fences(text.strip("\n"))
        if not body.strip():
            return [NO_TEXT_FOUND_TEXT]
        return [
            f"{CODE_FENCE}\n{part}\n{CODE_FENCE}" for part in split_text(body, limit - CODE_BLOCK_OVERHEAD)
        ]
    body = text.strip()
    if not body:
        return [EMPTY_ANSWER_TEXT]
    return split_without_live_links(body, limit)


def split_without_live_links(text: str, limit: int) -> list[str]:
    """:func:`split_text`, each part then shown without live links (:func:`without_live_links`).

    Each part is made safe on its own, because a code block cut in two is no code block in either
    message; making addresses safe adds a few characters, so the cut is made shorter until every part fits.
    """
    room = limit
    while True:
        parts = [without_live_links(part) for part in split_text(text, room)]
        if all(len(part) <= limit for part in parts) or room == 1:
            return parts
        room = max(1, room * 9 // 10)
