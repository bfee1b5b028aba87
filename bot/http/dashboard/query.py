"""The dashboard's query parameters (week, span of weeks, sort order) read into values, or a
`BadParameter` that the pages answer with a human 400/422 page naming the parameter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from handlers.digest import Week
from handlers.errors import InvalidInput

__all__ = [
    "DEFAULT_SPAN_WEEKS",
    "MAX_SPAN_WEEKS",
    "BadParameter",
    "choice_param",
    "span_params",
    "week_param",
    "weeks_between",
]

DEFAULT_SPAN_WEEKS = 13  # a quarter, for the regulator's report
MAX_SPAN_WEEKS = 60  # a year and a bit: one export stays a few seconds of work
_SHOWN_CHARS = 40  # of a bad value, echoed back


class BadParameter(Exception):
    """A query value the dashboard cannot use: `key` is the text (dashboard_texts.yaml)."""

    def __init__(self, status: int, key: str, **values: Any) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.values = values


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"


def week_param(query: Mapping[str, str], name: str, default: Week) -> Week:
    """The ISO week in `query[name]`, or `default` when absent or empty."""
    text = query.get(name, "").strip()
    if not text:
        return default
    try:
        return Week.parse(text)
    except InvalidInput:
        raise BadParameter(400, "bad_week", name=name, value=_shown(text)) from None


def weeks_between(start: Week, end: Week) -> list[Week]:
    """`start` to `end`, both included, oldest first (empty when start is after end)."""
    found: list[Week] = []
    current = start
    while current <= end:
        found.append(current)
        current = current.following()
    return found


def span_params(query: Mapping[str, str], last: Week) -> tuple[Week, Week]:
    """`from` and `to`: by default the `DEFAULT_SPAN_WEEKS` weeks up to `last`."""
    end = week_param(query, "to", last)
    start = week_param(query, "from", end.back(DEFAULT_SPAN_WEEKS)[0])
    if start > end:
        raise BadParameter(422, "bad_order", start=start.label, end=end.label)
    # Counted by stepping at most one past the limit: a span of centuries costs nothing.
    count, current = 1, start
    while current < end and count <= MAX_SPAN_WEEKS:
        current, count = current.following(), count + 1
    if count > MAX_SPAN_WEEKS:
        weeks = (end.monday - start.monday).days // 7 + 1
        raise BadParameter(
            422, "bad_span", start=start.label, end=end.label, weeks=weeks, limit=MAX_SPAN_WEEKS
        )
    return start, end


def choice_param(query: Mapping[str, str], name: str, allowed: Sequence[str], default: str) -> str:
    value = query.get(name, "").strip()
    if not value:
        return default
    if value not in allowed:
        raise BadParameter(
            400, "bad_choice", name=name, value=_shown(value), allowed=", ".join(allowed)
        )
    return value
