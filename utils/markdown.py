"""Markdown tables for reports (eval.md) and benchmark printouts: one writer, one layout.

    markdown_table(["metric", "gt"], [["FID", "0.002"], ["Diversity", "9.5"]])
    -> ["| metric | gt |", "|---|---|", "| FID | 0.002 |", "| Diversity | 9.5 |"]
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Lines of a GitHub markdown table; cells are written with `str` (format numbers before passing them).

    Raises ValueError naming the row when a row has another number of cells than the header.
    """
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"utils/markdown.py: row {i} has {len(cells)} cells, the header {len(header)} "
                             f"({header}); got {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
