"""Untrusted text shown without live links: what the model says, names people chose."""

from __future__ import annotations

import re

import pytest

from bot.formatting import MESSAGE_LIMIT, format_answer
from bot.markdown import for_discord
from bot.safe_text import MAX_SHOWN_URL, shown_name, without_live_links

# An address Discord would turn into a link: a scheme, or an invite, outside any code.
LIVE = re.compile(r"[a-z][a-z0-9+.-]*://|discord\.gg/|discord(?:app)?\.com/invite", re.IGNORECASE)


def live_addresses(text: str) -> list[str]:
    """The addresses Discord would link in ``text``: those outside closed code spans and blocks, reading
    backticks left to right as Discord does, an escaped backtick being no backtick."""
    outside = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    outside = outside.replace("\\`", "")
    outside = re.sub(r"`[^`\n]+`", "", outside)
    return LIVE.findall(outside)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Claim your prize at https://evil.example/win", "Claim your prize at `https://evil.example/win`"),
        (
            "[open your account](https://evil.example/login)",
            "open your account (`https://evil.example/login`)",
        ),
        ('[here](<https://evil.example/a> "title")', "here (`https://evil.example/a`)"),
        ("[](https://evil.example/)", "`https://evil.example/`"),
        ("Join discord.gg/abc123!", "Join `discord.gg/abc123`!"),
        ("See <https://evil.example/x>.", "See `https://evil.example/x`."),
        ("(https://evil.example/page)", "(`https://evil.example/page`)"),
        ("steam://run/1 and http://x.example", "`steam://run/1` and `http://x.example`"),
        ("no links here, just a cat.", "no links here, just a cat."),
    ],
)
def test_addresses_stay_visible_but_are_never_links(text, shown):
    assert without_live_links(text) == shown
    assert live_addresses(without_live_links(text)) == []


def test_code_is_left_exactly_as_it_is():
    text = "```\nvisit https://evil.example\n``` and `https://in.code` too"
    assert without_live_links(text) == text


def test_a_stray_backtick_cannot_pair_with_an_address_span():
    text = "it`s at https://evil.example/x"
    safe = without_live_links(text)
    assert live_addresses(safe) == []
    assert "https://evil.example/x" in safe


def test_a_code_block_never_closed_is_plain_text():
    text = "```\nhttps://evil.example/x"
    assert live_addresses(without_live_links(text)) == []


def test_a_very_long_address_is_cut():
    url = "https://evil.example/" + "a" * 5000
    safe = without_live_links(url)
    assert len(safe) == MAX_SHOWN_URL + 3  # two backticks and the ellipsis
    assert live_addresses(safe) == []


def test_an_answer_cut_into_messages_has_no_live_link_in_any_part():
    # A code block spanning the cut is no code block in either message.
    text = "```\n" + "\n".join(f"line {i} https://evil.example/{i}" for i in range(200)) + "\n```"
    parts = format_answer(text, code_block=False)
    assert len(parts) > 1
    for part in parts:
        assert len(part) <= MESSAGE_LIMIT
        assert live_addresses(part) == []


def test_many_addresses_still_fit_discords_limit():
    text = " ".join(f"https://e.example/{i}" for i in range(400))
    parts = format_answer(text, code_block=False)
    assert all(len(part) <= MESSAGE_LIMIT for part in parts)
    assert all(live_addresses(part) == [] for part in parts)
    assert sum(part.count("https://") for part in parts) == 400  # none lost


def test_ocr_code_blocks_keep_their_text():
    text = "Pay at https://evil.example/pay"
    [part] = format_answer(text, code_block=True)
    assert part == f"```\n{text}\n```"


def test_markdown_ocr_shows_addresses_as_code():
    table = "| a | b |\n|---|---|\n| 1 | 2 |"
    shown = for_discord(f"# Invoice\n- pay at [our site](https://evil.example/pay)\n\n{table}")
    assert live_addresses(shown) == []
    assert "our site (`https://evil.example/pay`)" in shown


def test_names_are_plain_text():
    assert shown_name("**big** [x](https://evil.example)") == "\\*\\*big\\*\\* x (`https://evil.example`)"
    assert live_addresses(shown_name("discord.gg/raid")) == []
