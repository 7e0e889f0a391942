"""How `keel get` prints tables: aligned columns. The columns themselves (per kind, with
`-o wide` extras) live in `keel.api.columns`, shared with the API server's Table answers.
"""

from __future__ import annotations

from collections.abc import Sequence

from keel.api.columns import TABLES, Extras, Row, Table, condition, node_status, table_for

__all__ = ["TABLES", "Extras", "Printer", "Row", "Table", "condition", "node_status", "table_for"]


class Printer:
    """Aligned columns; widths are fixed by the first batch so `-w` rows line up."""

    def __init__(self, headers: list[str]) -> None:
        self.headers = headers
        self.widths: list[int] = [len(h) for h in headers]

    def fit(self, rows: Sequence[Sequence[str]]) -> None:
        for row in rows:
            self.widths = [max(w, len(cell)) for w, cell in zip(self.widths, row, strict=False)]

    def line(self, cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) for cell, width in zip(cells[:-1], self.widths[:-1], strict=False)
        ]
        return "   ".join([*padded, cells[-1]]).rstrip()

    def render(self, rows: Sequence[Sequence[str]], *, header: bool = True) -> list[str]:
        self.fit(rows)
        lines = [self.line(self.headers)] if header else []
        return lines + [self.line(row) for row in rows]
