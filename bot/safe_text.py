"""Untrusted text made safe to show on Discord: what the model says, and names people chose.

The model repeats whatever a picture says, so an answer may carry a phishing address, a masked link
(``[your account](https://…)``) or an invite. :func:`without_live_links` keeps every address visible but
never clickable and never previewed: each one is shown as inline code, and a masked link shows its label
and its address side by side. Text already inside code (a span or a fenced block, as OCR answers are) is
left exactly as it is, since Discord links nothing there. Mentions are off on every message the bot
sends (``AllowedMentions.none()``), so nothing here needs to defuse them.

Pure functions, no Discord calls.
"""

from __future__ import annotations

import re

import discord

# Longest address shown in full; past it the address is cut (an address this long is an attack, not a
# reference), so that an inline code span never needs more than one line or one message.
MAX_SHOWN_URL = 300
ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"

# Code as Discord surely reads it, left to right: a closed fenced block, or a span on one line. Anything
# less (a fence never closed, as when a long answer is cut into messages) is plain text here, its
# backticks escaped, so an address inside it is treated like any other.
_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)
# [label](address "optional title"), the address possibly in angle brackets.
_MASKED_LINK = re.compile(r"\[([^\[\]\n]*)\]\(\s*<?([^\s()<>]+)>?(?:\s+\"[^\"\n]*\")?\s*\)")
# An address Discord would link: any scheme (https:, steam:, …) or an invite without one. It ends before
# whitespace, brackets, quotes or a backtick, and trailing punctuation stays outside it.
_URL = re.compile(
    r"<?("
    r"(?:[a-z][a-z0-9+.\-]*:/{1,3}|(?:www\.)?(?:discord(?:app)?\.com/invite|discord\.gg)/)"
    r"[^\s<>`\"'\[\]]*[^\s<>`\"'\[\].,;:!?)}]"
    r")>?",
    re.IGNORECASE,
)


def _shown_url(match: re.Match[str]) -> str:
    url = match.group(1)
    if len(url) > MAX_SHOWN_URL:
        url = url[:MAX_SHOWN_URL] + ELLIPSIS
    return f"`{url}`"


def _open_masked_links(text: str) -> str:
    """``[label](address)`` as ``label (address)``: what it says and where it goes, side by side."""
    return _MASKED_LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})" if m.group(1) else m.group(2), text)


def _addresses_as_code(text: str) -> str:
    return _URL.sub(_shown_url, text)


def _plain(text: str) -> str:
    """One stretch of text outside code: masked links opened up, every address put in a code span, and any
    backtick left over escaped so that it cannot pair with one of those spans."""
    return _addresses_as_code(_open_masked_links(text).replace("`", "\\`"))


def without_live_links(text: str) -> str:
    """``text`` as it reads, with no address Discord would link or preview; code is left untouched."""
    out: list[str] = []
    start = 0
    for code in _CODE.finditer(text):
        out.append(_plain(text[start : code.start()]))
        out.append(code.group(0))
        start = code.end()
    out.append(_plain(text[start:]))
    return "".join(out)


def shown_name(name: str) -> str:
    """A display name or file name as plain text: no Markdown, no link."""
    escaped = discord.utils.escape_markdown(_open_masked_links(name))  # addresses are left as they are
    return _addresses_as_code(escaped)
