"""Reading the dashboard's pages in tests: the overview's rows as the cells' raw values and
texts (the `data-*` attributes the templates write), without a browser."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class PageRow:
    unit: str
    cells: dict[str, tuple[str, str]] = field(default_factory=dict)  # column: (raw, text)


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[PageRow] = []
        self._column: str | None = None
        self._raw = ""
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get("data-unit"):
            self.rows.append(PageRow(unit=found["data-unit"] or ""))
        elif tag == "td" and self.rows and found.get("data-col"):
            self._column, self._raw, self._text = (
                found["data-col"],
                found.get("data-value") or "",
                [],
            )

    def handle_data(self, data: str) -> None:
        if self._column is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._column is not None:
            self.rows[-1].cells[self._column] = (self._raw, "".join(self._text).strip())
            self._column = None


def overview_rows(html: str) -> list[PageRow]:
    """The rows of the overview's table, in the page's order (the scope's first)."""
    parser = _Rows()
    parser.feed(html)
    return parser.rows
