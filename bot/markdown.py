"""OCR answers as Markdown: tables checked and repaired, and shown in a way Discord can display.

The model is asked for Markdown (pipe tables, headings, lists) but may write a table whose rows
have fewer cells than its header, or leave out the separator line. :func:`tidy_markdown` repairs
what it safely can (a missing separator, short rows padded with empty cells, empty trailing cells
dropped) and fences a table it cannot repair as plain text, so nothing is shown wrongly.

Discord renders headings, lists and emphasis but not tables, so :func:`for_discord` draws each table
with aligned columns inside a code block. The file version (a long answer) keeps the real Markdown.
Pure functions, no Discord calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.safe_text import without_live_links

FENCE = "```"
_SEPARATOR_CELL = re.compile(r"^:?-+:?$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Table:
    """A pipe table: its header, its rows (each exactly as wide as the header), or the raw lines."""

    header: list[str]
    rows: list[list[str]]
    raw: list[str]
    repaired: bool  # False: the rows could not be made to fit the header; shown as written


def split_cells(line: str) -> list[str]:
    """The cells of one table line, without the outer pipes; ``\\|`` stays inside its cell."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [cell.strip() for cell in _CELL_SPLIT.split(body)]


def is_separator(cells: list[str]) -> bool:
    return bool(cells) and all(_SEPARATOR_CELL.match(cell.replace(" ", "")) for cell in cells)


def _is_table_line(line: str) -> bool:
    return line.strip().startswith("|") and line.strip().count("|") >= 2


def _fit(row: list[str], width: int) -> list[str] | None:
    """The row made exactly ``width`` cells wide, or None when that would lose text."""
    if len(row) > width:
        if any(row[width:]):
            return None
        row = row[:width]
    return row + [""] * (width - len(row))


def parse_table(lines: list[str]) -> Table:
    cells = [split_cells(line) for line in lines]
    header, body = cells[0], cells[1:]
    if body and is_separator(body[0]):
        body = body[1:]
    fitted = [_fit(row, len(header)) for row in body]
    if any(row is None for row in fitted):
        return Table(header, [], list(lines), repaired=False)
    return Table(header, [row for row in fitted if row is not None], list(lines), repaired=True)


def _blocks(text: str) -> list[str | Table]:
    """The text as plain lines and tables, in order (code blocks are left alone)."""
    blocks: list[str | Table] = []
    lines = text.splitlines()
    index, in_code = 0, False
    while index < len(lines):
        line = lines[index]
        if line.strip().startswith(FENCE):
            in_code = not in_code
        if not in_code and _is_table_line(line):
            end = index
            while end < len(lines) and _is_table_line(lines[end]):
                end += 1
            if end - index >= 2:  # one line with pipes is not a table
                blocks.append(parse_table(lines[index:end]))
                index = end
                continue
        blocks.append(line)
        index += 1
    return blocks


def _pipe_table(table: Table) -> list[str]:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    return [row(table.header), row(["---"] * len(table.header)), *(row(cells) for cells in table.rows)]


def _fenced(lines: list[str]) -> list[str]:
    return [FENCE, *(line.replace(FENCE, "`\u200b``") for line in lines), FENCE]


def tidy_markdown(text: str) -> str:
    """The Markdown with every table well formed (same column count everywhere, a separator line).

    A table whose rows hold more cells than its header is fenced as written rather than guessed at.
    """
    out: list[str] = []
    for block in _blocks(text.strip()):
        if isinstance(block, Table):
            out += _pipe_table(block) if block.repaired else _fenced(block.raw)
        else:
            out.append(block)
    return "\n".join(out)


def tables_well_formed(text: str) -> bool:
    """Every pipe table has a separator line and rows exactly as wide as its header."""
    for block in _blocks(text):
        if isinstance(block, Table):
            cells = [split_cells(line) for line in block.raw]
            width = len(cells[0])
            if len(cells) < 2 or not is_separator(cells[1]) or any(len(row) != width for row in cells):
                return False
    return True


def _aligned(table: Table) -> list[str]:
    every_row = [table.header, *table.rows]
    widths = [max(len(row[column]) for row in every_row) for column in range(len(table.header))]

    def row(cells: list[str]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    rule = "-+-".join("-" * width for width in widths)
    return _fenced([row(table.header), rule, *(row(cells) for cells in table.rows)])


def for_discord(text: str) -> str:
    """The tidied Markdown as Discord shows it: tables as aligned columns in code blocks, and no address
    that Discord would link (:func:`bot.safe_text.without_live_links`)."""
    out: list[str] = []
    for block in _blocks(tidy_markdown(text)):
        out += _aligned(block) if isinstance(block, Table) else [block]
    return without_live_links("\n".join(out).strip())
