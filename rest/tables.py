"""Tables as text: the one printer behind every table the project writes or shows.

GitHub-flavoured markdown, so the same text reads on a terminal and renders in a
README or an issue. Hand-written because pandas' ``DataFrame.to_markdown`` needs the
optional ``tabulate`` package, and because ``prepare-data check`` prints a table
without importing pandas (a list of dicts is enough here).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def _columns_and_rows(table) -> tuple[list[str], list[Sequence[Any]]]:
    """(column names, rows of values) of a pandas DataFrame or of a list of dicts with equal keys."""
    if hasattr(table, "itertuples"):  # a DataFrame; duck-typed so this module never imports pandas
        return [str(c) for c in table.columns], list(table.itertuples(index=False))
    rows: Sequence[Mapping[str, Any]] = table
    columns = list(rows[0]) if rows else []
    return [str(c) for c in columns], [[row[c] for c in columns] for row in rows]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def float_cell(spec: str = "g", nan: str = "n/a") -> Callable[[Any], str]:
    """A cell renderer for ``markdown``: floats with the format `spec` and NaN as `nan`;
    anything else (ints, text) with ``str``."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return nan if value != value else format(value, spec)
        return str(value)

    return cell


def markdown(table, cell: Callable[[Any], str] = str, aligned: bool = False, empty: str = "_no rows_") -> str:
    """`table` as a markdown table (no trailing newline).

    table: a pandas DataFrame, or a list of dicts with equal keys.
    cell: renders one value (the header is always ``str`` of the column name).
    aligned: pad every column to its widest cell and right-align the columns that hold
        only numbers, so the text lines up on a terminal; otherwise cells are unpadded
        (compact files).
    empty: the text for a table without rows (or columns).
    """
    columns, rows = _columns_and_rows(table)
    if not rows or not columns:
        return empty
    body = [[cell(v) for v in row] for row in rows]
    if not aligned:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    right = [all(_is_number(row[i]) for row in rows) for i in range(len(columns))]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(columns), rule] + [line(r) for r in body])
