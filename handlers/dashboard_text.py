"""Texts and formats of the officials' dashboard (vi and en): the page catalogue
(handlers/data/dashboard_texts.yaml), dates as dd/mm/yyyy, durations, item names.

Numbers, percentages and factor names are the digest's (handlers/digest_text.py), so that a
page and the chat digest of the same week read alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from handlers.digest_text import dt, factor_name, number, percent
from handlers.questionnaire import LOCALES, available_questionnaires, load_questionnaire

__all__ = [
    "date_text",
    "duration_text",
    "item_name",
    "item_text",
    "moment_text",
    "number",
    "page_text",
    "percent",
    "signed",
    "too_few_text",
]


@cache
def _texts() -> Mapping[str, Mapping[str, str]]:
    raw = resources.files("handlers").joinpath("data", "dashboard_texts.yaml").read_text("utf-8")
    loaded: dict[str, dict[str, str]] = yaml.safe_load(raw)
    return loaded


def page_text(key: str, locale: str, **values: Any) -> str:
    """A dashboard text in `locale` (Vietnamese when unknown), placeholders filled."""
    entry = _texts()[key]
    return entry.get(locale, entry[LOCALES[0]]).format(**values)


def too_few_text(locale: str) -> str:
    """What stands where the digest hides a figure: "chưa đủ phản hồi"."""
    return dt("too_few_short", locale)


def signed(value: float, locale: str) -> str:
    """A change in points, with its sign: +2,5 / −1,0 (a real minus sign)."""
    text = number(abs(value), locale)
    return ("+" if value > 0 else "−" if value < 0 else "±") + text


def date_text(day: date) -> str:
    return f"{day:%d/%m/%Y}"


def moment_text(moment: datetime, tz: ZoneInfo) -> str:
    """An instant as local dd/mm/yyyy HH:MM."""
    return f"{moment.astimezone(tz):%d/%m/%Y %H:%M}"


def duration_text(span: timedelta, locale: str) -> str:
    """2 ngày 3 giờ / 45 phút: the two largest units, rounded down to minutes."""
    minutes = max(0, int(span.total_seconds() // 60))
    if minutes == 0:
        return page_text("duration.instant", locale)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [
        page_text(f"duration.{unit}", locale, count=count)
        for unit, count in (("days", days), ("hours", hours), ("minutes", minutes))
        if count
    ]
    return " ".join(parts[:2])


@cache
def _question_texts() -> Mapping[str, Mapping[str, str]]:
    """Each rating question's prompt by id, over every questionnaire (ids never repeat)."""
    found: dict[str, dict[str, str]] = {}
    for name in available_questionnaires():
        for question in load_questionnaire(name).ratings:
            found.setdefault(question.id, {loc: question.prompt(loc) for loc in LOCALES})
    return found


def item_name(question_id: str, factor: str, locale: str) -> str:
    """As in the digest: the factor's name, with the question id when it is not the factor."""
    name = factor_name(factor, locale)
    return name if question_id == factor else f"{question_id} ({name})"


def item_text(question_id: str, locale: str) -> str | None:
    """The question as the citizen read it, if it is still in a questionnaire."""
    texts = _question_texts().get(question_id)
    return None if texts is None else texts.get(locale, texts[LOCALES[0]])
