"""Fitting a table to the console without cutting the values that tell rows apart.

A column is a :class:`Column` with a role. ``KEY`` columns (statuses, times, counts) keep their
width; ``ID`` columns (run ids, workflow ids, step and workflow names) are never cut at their
end: when they must be narrower they are shortened in the middle by :func:`shorten_middle`, so
both ends stay (``provision…-0011``); ``TEXT`` columns (error messages) end in an ellipsis. When
the console is too narrow, :func:`fit_columns` gives up width in this order: the text columns
shrink to their minimum, columns with a compact form switch to it (the date of today's start
times, a progress bar's bar), the text columns are dropped, then the columns marked droppable
(a workflow name beside its workflow id), and only then are the identifier
columns shortened, the widest first. :func:`fitted_table` renders the result as a rich table
whose every column has its width fixed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from rich.table import Table
from rich.text import Text

from exporters.cli._format import compact_table

__all__ = ["GAP", "Column", "Role", "fit_columns", "fitted_table", "shorten_middle"]

GAP = 2
"""Cells between two columns of :func:`~exporters.cli._format.compact_table`."""

_ID_MIN = 8  # an identifier is never shortened below this (a run-id prefix is 8 long)
_TEXT_MIN = 12  # a text column narrower than this says nothing: it is dropped instead
_WORD = re.compile(r"[-_.:/ ][^-_.:/ ]*$")  # the last word of an identifier, with its separator


class Role(enum.Enum):
    """How a column gives up width when the console is too narrow."""

    KEY = "key"
    ID = "id"
    TEXT = "text"


@dataclass
class Column:
    """One column: its header, one cell per row, its role and an optional compact form."""

    header: str
    cells: list[Text]
    role: Role = Role.KEY
    justify: Literal["left", "right"] = "left"
    compact: list[Text] | None = None
    """Narrower cells saying nearly as much, used before any identifier is shortened."""
    min_width: int = 0
    droppable: bool = False
    """Left out, before any identifier is shortened, when the console is too narrow."""
    width: int = field(default=0, init=False)

    def natural(self) -> int:
        """The width this column needs to show every cell and its header whole."""
        cells = max((cell.cell_len for cell in self.cells), default=0)
        return max(len(self.header), cells, self.min_width)

    def use_compact(self) -> None:
        """Switch to the compact cells, if any."""
        if self.compact is not None:
            self.cells, self.compact = self.compact, None


def shorten_middle(value: str, width: int) -> str:
    """*value* in at most *width* characters, an ellipsis in its middle so both ends stay.

    The end keeps the value's last word (``-0011``) when it fits in half the room, so ids
    that differ in their number stay apart: ``provision_srv-0011`` at 15 is
    ``provision…-0011``.
    """
    if len(value) <= width:
        return value
    if width <= 1:
        return "…"[:width]
    room = width - 1
    word = _WORD.search(value)
    tail = len(word.group()) if word and len(word.group()) <= room // 2 else room // 2
    tail = max(tail, room // 3)
    return value[: room - tail] + "…" + value[len(value) - tail :]


def _total(columns: Sequence[Column]) -> int:
    return sum(column.width for column in columns) + GAP * max(0, len(columns) - 1)


def fit_columns(columns: Sequence[Column], width: int) -> list[Column]:
    """The columns that are shown at *width*, each with its ``width`` set.

    Nothing is cut when everything fits. Otherwise, in order: text columns shrink to
    ``_TEXT_MIN``, compact forms replace full ones, text columns are dropped, then the
    ``droppable`` ones (in their order), and identifier
    columns are shortened one cell at a time, the widest first, down to ``_ID_MIN`` (or their
    header). Key columns are never narrowed; a console narrower than what is left overflows.
    """
    shown = list(columns)
    for column in shown:
        column.width = column.natural()
    excess = _total(shown) - width
    texts = [c for c in shown if c.role is Role.TEXT]
    for column in texts:
        if excess <= 0:
            return shown
        give = min(excess, max(0, column.width - _TEXT_MIN))
        column.width -= give
        excess -= give
    for column in shown:
        if excess <= 0:
            return shown
        if column.compact is not None:
            before = column.width
            column.use_compact()
            column.width = column.natural()
            excess -= before - column.width
    for column in [*texts, *(c for c in columns if c.droppable)]:
        if excess <= 0:
            return shown
        shown.remove(column)
        excess -= column.width + GAP
    ids = [c for c in shown if c.role is Role.ID]
    floor = {id(c): max(_ID_MIN, min(len(c.header), c.width)) for c in ids}
    while excess > 0:
        widest = max(ids, key=lambda c: c.width - floor[id(c)], default=None)
        if widest is None or widest.width <= floor[id(widest)]:
            break
        widest.width -= 1
        excess -= 1
    return shown


def fitted_table(columns: Sequence[Column], width: int, **options: object) -> Table:
    """A compact table of *columns* fitted to *width* by :func:`fit_columns`.

    Identifier cells too wide for their column are shortened in the middle, keeping their
    style; text cells end in an ellipsis; *options* go to the table (its title).
    """
    shown = fit_columns(columns, width)
    table = compact_table(**options)
    for column in shown:
        table.add_column(
            column.header,
            justify=column.justify,
            width=column.width,
            no_wrap=True,
            overflow="ellipsis",
        )
    rows = len(columns[0].cells) if columns else 0
    for index in range(rows):
        cells = []
        for column in shown:
            cell = column.cells[index]
            if column.role is Role.ID and cell.cell_len > column.width:
                cell = Text(shorten_middle(cell.plain, column.width), style=cell.style)
            cells.append(cell)
        table.add_row(*cells)
    return table
