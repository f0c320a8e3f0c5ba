"""Plain-text tables for the command line: left-aligned columns, one header row."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Lay out `rows` under `headers`, each column as wide as its widest cell.

    Args:
        headers: the column names.
        rows: the cells of each row (turned to text with `str`).

    Returns:
        The table, one line per row after the header, no trailing spaces.
    """
    cells = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells
    )
