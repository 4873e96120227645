"""OCR as Markdown: tables checked and repaired, and drawn so that Discord shows them."""

from __future__ import annotations

from bot.markdown import for_discord, split_cells, tables_well_formed, tidy_markdown

RECEIPT = """# Receipt

| Item | Qty | Price |
|---|---|---|
| Tea | 2 | 3.00 |
| Cake | 1 | 4.50 |

- paid by card
"""


def test_a_well_formed_table_is_kept_and_drawn_in_aligned_columns():
    assert tables_well_formed(tidy_markdown(RECEIPT))
    shown = for_discord(RECEIPT)
    assert shown.startswith("# Receipt")  # headings and lists render on Discord as they are
    assert shown.endswith("- paid by card")
    table = shown.split("```")[1].strip("\n").splitlines()
    assert table == [
        "Item | Qty | Price",
        "-----+-----+------",
        "Tea  | 2   | 3.00",
        "Cake | 1   | 4.50",
    ]


def test_short_rows_are_padded_and_a_missing_separator_is_added():
    ragged = "| A | B | C |\n| 1 | 2 |\n| 3 |"
    tidy = tidy_markdown(ragged)
    assert tidy.splitlines() == ["| A | B | C |", "| --- | --- | --- |", "| 1 | 2 |  |", "| 3 |  |  |"]
    assert tables_well_formed(tidy) and not tables_well_formed(ragged)


def test_a_row_wider_than_its_header_is_not_guessed_at_but_shown_as_written():
    wide = "| A | B |\n|---|---|\n| 1 | 2 | 3 |"
    tidy = tidy_markdown(wide)
    assert tidy.splitlines() == ["```", "| A | B |", "|---|---|", "| 1 | 2 | 3 |", "```"]
    assert tables_well_formed(tidy)  # no table left that could render wrongly
    # Empty extra cells lose nothing, so they are simply dropped.
    assert tidy_markdown("| A | B |\n|---|---|\n| 1 | 2 | |") == "| A | B |\n| --- | --- |\n| 1 | 2 |"


def test_pipes_inside_code_blocks_and_escaped_pipes_are_not_tables():
    text = "```\n| not | a table |\n| x | y |\n```"
    assert tidy_markdown(text) == text
    assert split_cells(r"| a \| b | c |") == [r"a \| b", "c"]
    assert tidy_markdown("one | two") == "one | two"  # a lone line with a pipe is prose
