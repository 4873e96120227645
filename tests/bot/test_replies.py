"""Splitting, code blocks and streaming edits of answers."""

from __future__ import annotations

import pytest

from bot.replies import (
    ANSWER_FILENAME,
    EMPTY_ANSWER_TEXT,
    MESSAGE_LIMIT,
    NO_TEXT_FOUND_TEXT,
    QUEUE_TEXT,
    PlaceInLine,
    deliver_answer,
    format_answer,
    split_text,
    stream_answer,
)


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


class RecordingPosted:
    def __init__(self, events: list, number: int) -> None:
        self.events, self.number = events, number

    async def edit(self, *, content: str) -> None:
        self.events.append((f"edit {self.number}", content))

    async def delete(self) -> None:
        self.events.append((f"delete {self.number}", ""))


class RecordingTarget:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.files: list[bytes] = []
        self.added = 0

    async def start(self) -> None:
        self.events.append(("start", ""))

    async def show(self, content: str) -> None:
        self.events.append(("show", content))

    async def add(self, content: str) -> RecordingPosted:
        self.events.append(("add", content))
        self.added += 1
        return RecordingPosted(self.events, self.added)

    async def add_file(self, content, file) -> None:
        self.events.append(("file", file.filename))
        self.files.append(file.fp.read())


async def pieces(*items: str):
    for item in items:
        yield item


async def test_stream_edits_at_most_once_per_interval_then_shows_the_final_text():
    now = [0.0]
    target = RecordingTarget()

    async def timed():
        for step, piece in enumerate(["a", "b", "c", "d", "e"]):
            now[0] = step * 0.6
            yield piece

    text = await stream_answer(target, timed(), code_block=False, clock=lambda: now[0])
    assert text == "abcde"
    # pieces arrive at t=0, 0.6, 1.2, 1.8, 2.4: edits at 1.2 and 2.4 only; the final text is
    # already showing, so no extra edit is spent on it
    assert target.events == [("show", "abc"), ("show", "abcde")]


async def test_long_answers_become_several_messages():
    target = RecordingTarget()
    text = "\n".join("x" * 90 for _ in range(50))  # ~4,550 characters
    await deliver_answer(target, text, code_block=False)
    kinds = [kind for kind, _ in target.events]
    assert kinds == ["show", "add", "add"]
    assert "\n".join(content for _, content in target.events) == text


async def test_very_long_answers_become_a_text_file():
    target = RecordingTarget()
    text = "\n".join("y" * 90 for _ in range(150))  # ~13,650 characters, more than 4 messages
    await deliver_answer(target, text, code_block=False)
    assert target.events[0][0] == "show" and "attached as a file" in target.events[0][1]
    assert target.events[1] == ("file", ANSWER_FILENAME)
    assert target.files == [text.encode()]


def messages_after(events: list[tuple[str, str]]) -> list[str]:
    """What the channel shows once these events have happened: the main message, then the added ones."""
    messages = [""]
    for kind, content in events:
        if kind == "show":
            messages[0] = content
        elif kind == "add":
            messages.append(content)
        elif kind.startswith("edit"):
            messages[int(kind.split()[1])] = content
    return messages


def timed_lines(now: list[float], lines: list[str], seconds_per_line: float):
    async def stream():
        for step, line in enumerate(lines):
            now[0] = step * seconds_per_line
            yield line + "\n"

    return stream()


async def test_a_long_answer_continues_in_new_messages_while_it_streams():
    now = [0.0]
    target = RecordingTarget()
    lines = [f"{n:02d} " + "w" * 96 for n in range(45)]  # 100 characters a line: 19 lines per message
    text = await stream_answer(target, timed_lines(now, lines, 0.25), code_block=False, clock=lambda: now[0])
    assert text == "".join(line + "\n" for line in lines)
    kinds = [kind for kind, _ in target.events]
    # the second and third messages were posted while the answer was still streaming, then edited
    assert kinds.index("add") < len(kinds) - 2
    assert kinds.count("add") == 2 and "edit 1" in kinds
    assert "delete 1" not in kinds and "delete 2" not in kinds
    assert messages_after(target.events) == format_answer(text, code_block=False)
    # each message edited at most once per interval: one tick every 4 lines, one edit per tick at most
    assert (
        kinds.count("show") + kinds.count("edit 1") + kinds.count("edit 2") + kinds.count("add") <= 45 / 4 + 3
    )


async def test_a_preview_past_four_messages_ends_as_a_file_and_its_continuations_go():
    now = [0.0]
    target = RecordingTarget()
    lines = ["v" * 99 for _ in range(120)]  # ~12,000 characters: more than four messages
    text = await stream_answer(target, timed_lines(now, lines, 0.5), code_block=False, clock=lambda: now[0])
    kinds = [kind for kind, _ in target.events]
    assert kinds.count("add") == 3  # the live preview stops at four messages
    assert {"delete 1", "delete 2", "delete 3"} <= set(kinds)
    assert kinds[-2:] == ["show", "file"] and "attached as a file" in target.events[-2][1]
    assert target.files == [text.encode()]


async def test_the_piece_stream_is_closed_when_showing_fails():
    closed = []

    async def endless():
        try:
            while True:
                yield "z"
        finally:
            closed.append(True)

    class Broken(RecordingTarget):
        async def show(self, content: str) -> None:
            raise RuntimeError("Discord is down")

    with pytest.raises(RuntimeError):
        await stream_answer(Broken(), endless(), code_block=False, interval_s=0)
    assert closed == [True]


async def test_place_in_line_is_shown_while_waiting_and_never_after_the_answer():
    now = [0.0]
    target = RecordingTarget()
    place = PlaceInLine(target, clock=lambda: now[0])

    async def queued_then_answered():
        for t, position in [(0.0, 4), (0.5, 3), (1.2, 2), (1.3, 2), (2.5, 1), (2.6, 0)]:
            now[0] = t
            place(position)
            yield ""
        yield "The answer."

    await stream_answer(
        target, queued_then_answered(), code_block=False, clock=lambda: now[0], place_in_line=place
    )
    # #3 came too soon after #4 and is skipped; repeats and 0 are ignored; the answer is last.
    assert target.events == [
        ("show", QUEUE_TEXT.format(position=4)),
        ("show", QUEUE_TEXT.format(position=2)),
        ("show", QUEUE_TEXT.format(position=1)),
        ("show", "The answer."),
    ]
