"""Splitting answers into Discord messages, and code blocks for OCR."""

from __future__ import annotations

import pytest

from bot.formatting import EMPTY_ANSWER_TEXT, MESSAGE_LIMIT, NO_TEXT_FOUND_TEXT, format_answer, split_text


def test_short_text_is_one_part():
    assert split_text("hello\nworld", 100) == ["hello\nworld"]


def test_split_happens_on_line_boundaries():
    lines = [f"line {i:03d}" for i in range(100)]  # 8 chars + newline each
    parts = split_text("\n".join(lines), 100)
    assert all(len(part) <= 100 for part in parts)
    assert "\n".join(parts).split("\n") == lines
    assert all(part.startswith("line") for part in parts)


def test_a_long_line_is_cut_at_a_space_then_hard():
    words = "word " * 50
    parts = split_text(words, 42)
    assert all(len(part) <= 42 for part in parts)
    assert "".join(parts).split() == words.split()
    assert split_text("x" * 95, 40) == ["x" * 40, "x" * 40, "x" * 15]


def test_format_answer_keeps_every_part_under_discords_limit():
    text = "\n".join(f"sentence number {i} is here." for i in range(400))
    parts = format_answer(text, code_block=False)
    assert len(parts) > 1
    assert all(len(part) <= MESSAGE_LIMIT for part in parts)


def test_ocr_parts_are_each_a_closed_code_block_with_fences_escaped():
    text = "before\n```python\nprint(1)\n```\n" + "\n".join(f"row {i}" for i in range(600))
    parts = format_answer(text, code_block=True)
    assert len(parts) > 1
    for part in parts:
        assert len(part) <= MESSAGE_LIMIT
        assert part.startswith("```\n") and part.endswith("\n```")
        assert "```" not in part[4:-4]


@pytest.mark.parametrize(("code_block", "expected"), [(False, EMPTY_ANSWER_TEXT), (True, NO_TEXT_FOUND_TEXT)])
def test_empty_answers_say_so(code_block, expected):
    assert format_answer("  \n ", code_block=code_block) == [expected]
