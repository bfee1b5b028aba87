"""One unit's figures (the weekly report's JSON) as the cells of a dashboard row: the text
shown, formatted with the digest's helpers, and the raw value (for `data-value`, so that a
test or a screen reader can check the page against the JSON report).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handlers.dashboard_text import number, page_text, percent, signed, too_few_text

__all__ = ["COLUMNS", "Cell", "cells_of", "raw_text"]

ARROWS = {"up": "▲", "down": "▼"}


@dataclass(frozen=True)
class Cell:
    column: str
    text: str
    raw: str  # the JSON value as text ("" for null)
    css: str = "num"


def raw_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _index(body: dict[str, Any], locale: str) -> Cell:
    value = body["sipas_index"]
    if value is None:
        return Cell("index", too_few_text(locale), "", "num few")
    return Cell("index", percent(value, locale), raw_text(value))


def _interval(body: dict[str, Any], locale: str) -> Cell:
    interval = body["confidence_interval"]
    if interval is None:
        return Cell("interval", "—", "")
    low, high = interval["low"], interval["high"]
    return Cell("interval", f"{number(low, locale)}–{number(high, locale)}", f"{low}–{high}")


def _rate(body: dict[str, Any], locale: str) -> Cell:
    rate = body["response_rate"]
    shown = "—" if rate is None else percent(round(100 * rate, 1), locale)
    return Cell("rate", shown, raw_text(rate))


def _change(body: dict[str, Any], locale: str) -> Cell:
    change, trend = body["change"], body["trend"]
    if change is None:
        return Cell("change", "—", "")
    arrow = ARROWS.get(trend or "")
    # The arrow only where the report says the change is beyond noise.
    text = signed(change, locale) + (f" {arrow}" if arrow else "")
    css = "num " + trend if arrow and trend else "num"
    return Cell("change", text, raw_text(change), css)


def _rank(body: dict[str, Any], locale: str) -> Cell:
    rank = body["rank"]
    if rank is None:
        return Cell("rank", "—", "")
    return Cell(
        "rank",
        page_text("rank_of", locale, position=rank["position"], of=rank["of"]),
        f"{rank['position']}/{rank['of']}",
    )


def _count(
    column: str, pick: Callable[[dict[str, Any]], int]
) -> Callable[[dict[str, Any], str], Cell]:
    def cell(body: dict[str, Any], locale: str) -> Cell:
        value = pick(body)
        return Cell(column, str(value), raw_text(value))

    return cell


COLUMNS: tuple[tuple[str, Callable[[dict[str, Any], str], Cell]], ...] = (
    ("index", _index),
    ("interval", _interval),
    ("responses", _count("responses", lambda body: body["responses"])),
    ("rate", _rate),
    ("change", _change),
    ("rank", _rank),
    ("open", _count("open", lambda body: body["escalations"]["open_now"])),
    ("breaches", _count("breaches", lambda body: body["escalations"]["sla_breaches"])),
    ("overdue", _count("overdue", lambda body: body["cases_overdue"])),
    ("apologies", _count("apologies", lambda body: body["apologies_sent"])),
)


def cells_of(body: dict[str, Any], locale: str) -> dict[str, Cell]:
    return {column: make(body, locale) for column, make in COLUMNS}
