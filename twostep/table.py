"""Plain-text tables for the CLI: columns as wide as their widest cell."""

from __future__ import annotations

from collections.abc import Sequence


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]], left_columns: int = 0) -> list[str]:
    """The header and rows as aligned lines: the first `left_columns` columns left-aligned (names),
    the rest right-aligned (numbers). Every row must have the header's length."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under a header of {len(header)}: {row!r}")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    return ["  ".join(cell.ljust(w) if i < left_columns else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
            for line in (header, *rows)]
