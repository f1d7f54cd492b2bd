"""rest.tables: the one table printer, for DataFrames (export) and lists of dicts (prepare-data check)."""

from __future__ import annotations

import math

import pandas as pd

from rest.tables import float_cell, markdown

ROWS = [
    {"split": "5pct/train", "group": "align", "images": 190, "share%": 95.0},
    {"split": "test", "group": "conflict", "images": 7, "share%": math.nan},
]


def test_a_list_of_dicts_and_a_dataframe_print_alike():
    assert markdown(ROWS) == markdown(pd.DataFrame(ROWS))
    assert markdown(ROWS, aligned=True) == markdown(pd.DataFrame(ROWS), aligned=True)


def test_compact_table_is_github_markdown():
    lines = markdown(ROWS, cell=lambda v: f"{v:g}" if isinstance(v, float) else str(v)).splitlines()
    assert lines[0] == "| split | group | images | share% |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2:] == ["| 5pct/train | align | 190 | 95 |", "| test | conflict | 7 | nan |"]


def test_aligned_table_lines_up_and_right_aligns_numbers():
    text = markdown(ROWS, aligned=True)
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header
    rule = lines[1].strip("|").split("|")
    assert [cell.endswith(":") for cell in rule] == [False, False, True, True]  # numeric columns only
    assert lines[3].startswith("| test       | conflict |") and lines[3].endswith("|      7 |    nan |")


def test_empty_tables_print_the_given_text():
    assert markdown([]) == "_no rows_"
    assert markdown(pd.DataFrame(columns=["a", "b"]), empty="(no images)") == "(no images)"
    assert markdown(pd.DataFrame(index=[0, 1])) == "_no rows_"  # rows but no columns


def test_float_cell_formats_floats_and_leaves_the_rest_to_str():
    cell = float_cell(".2f", nan="-")
    assert [cell(v) for v in (1 / 3, math.nan, 7, "x")] == ["0.33", "-", "7", "x"]
    assert float_cell()(0.05) == "0.05" and float_cell()(math.nan) == "n/a"
