"""The weekly digest as one chat message (vi or en): the numbers that matter first.

Order: the index and its change (an arrow only when the change is beyond noise), responses,
complaints past their deadline; then the factors, the scope's weakest unit and lowest item,
late cases, reports of informal payments, comment themes; then the units ranked. The text
stays under `MAX_CHARS`, below both Telegram's (4096) and Zalo's (2000) message limits: the
ranking is cut short first, pointing to the workbook.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import yaml

from handlers.comment_themes import THEME_NAMES
from handlers.digest import Figures, Report
from handlers.questionnaire import FACTORS, LOCALES

__all__ = ["MAX_CHARS", "digest_text", "dt", "factor_name", "number", "percent"]

MAX_CHARS = 2000
ARROWS = {"up": " ▲", "down": " ▼", "same": ""}
TOP_THEMES = 3


@cache
def _texts() -> Mapping[str, Mapping[str, str]]:
    raw = resources.files("handlers").joinpath("data", "digest_texts.yaml").read_text("utf-8")
    loaded: dict[str, dict[str, str]] = yaml.safe_load(raw)
    return loaded


def dt(key: str, locale: str, **values: Any) -> str:
    """A digest text in `locale` (Vietnamese when unknown), with its placeholders filled."""
    entry = _texts()[key]
    return entry.get(locale, entry[LOCALES[0]]).format(**values)


def number(value: float, locale: str, decimals: int = 1) -> str:
    """87.5 as `87,5` in Vietnamese and `87.5` in English."""
    text = f"{value:.{decimals}f}"
    return text.replace(".", ",") if locale == "vi" else text


def percent(value: float | None, locale: str) -> str:
    return dt("none", locale) if value is None else number(value, locale) + "%"


def factor_name(factor: str, locale: str) -> str:
    return dt(f"factor.{factor}", locale)


def _item_name(item: Mapping[str, Any], locale: str) -> str:
    name = factor_name(item["factor"], locale)
    if item["question_id"] == item["factor"]:
        return name
    return f"{item['question_id']} ({name})"


def _dates(report: Report, locale: str) -> str:
    monday = report.week.monday
    sunday = monday.fromordinal(monday.toordinal() + 6)
    return f"{monday:%d/%m}–{sunday:%d/%m/%Y}"


def _index_line(figures: Figures, locale: str, minimum: int) -> list[str]:
    body = figures.as_json()
    if body["sipas_index"] is None:
        return [dt("too_few", locale, minimum=minimum)]
    trend = ARROWS.get(body["trend"] or "same", "")
    line = dt("index", locale, index=percent(body["sipas_index"], locale), trend=trend)
    extras = []
    if body["previous_sipas_index"] is not None:
        extras.append(
            dt("previous", locale, previous=percent(body["previous_sipas_index"], locale))
        )
    interval = body["confidence_interval"]
    if interval is not None:
        extras.append(
            dt(
                "interval",
                locale,
                low=number(interval["low"], locale),
                high=number(interval["high"], locale),
            )
        )
    return [line + (f" ({'; '.join(extras)})" if extras else "")]


def digest_text(
    report: Report, locale: str = "vi", *, late: bool = False, max_chars: int = MAX_CHARS
) -> str:
    """The digest of `report`'s scope as one message."""
    overall = report.overall
    body = overall.as_json()
    minimum = report.min_responses
    lines = [dt("title", locale, week=report.week.label, dates=_dates(report, locale))]
    lines.append(f"<{overall.name}>" if overall.code is None else overall.name)
    if late:
        lines.append(dt("late", locale))
    lines.append("")
    lines.extend(_index_line(overall, locale, minimum))
    if body["surveys_sent"]:
        rate = percent(100 * (body["response_rate"] or 0.0), locale)
        lines.append(
            dt(
                "responses",
                locale,
                responses=body["responses"],
                sent=body["surveys_sent"],
                rate=rate,
            )
        )
    else:
        lines.append(dt("responses_only", locale, responses=body["responses"]))
    escalations = body["escalations"]
    lines.append(
        dt(
            "complaints",
            locale,
            breaches=escalations["sla_breaches"],
            open=escalations["open_now"],
            opened=escalations["opened"],
        )
    )
    if body["informal_payment_reports"]:
        lines.append(dt("informal_payment", locale, count=body["informal_payment_reports"]))

    if body["sipas_index"] is not None:
        lines.append("")
        lines.append(dt("factors", locale) + ":")
        for factor in FACTORS:
            lines.append(
                f"• {factor_name(factor, locale)}: {percent(body['factors'][factor], locale)}"
            )
        if body["lowest_items"]:
            lowest = body["lowest_items"][0]
            lines.append(
                dt(
                    "lowest_item",
                    locale,
                    item=_item_name(lowest, locale),
                    rate=percent(lowest["rate"], locale),
                )
            )
    weakest = report.weakest_unit
    if weakest is not None:
        lines.append(
            dt("weakest_unit", locale, name=weakest.name, index=percent(_shown(weakest), locale))
        )
    lines.append(
        dt("cases", locale, overdue=body["cases_overdue"], apologies=body["apologies_sent"])
    )
    qd = body["qd766"]
    if (
        qd["complaints_resolved_on_time"] is not None
        or qd["cases_not_unsatisfied_complained_or_overdue"] is not None
    ):
        lines.append(
            dt(
                "qd766",
                locale,
                on_time=percent(qd["complaints_resolved_on_time"], locale),
                clean=percent(qd["cases_not_unsatisfied_complained_or_overdue"], locale),
            )
        )
    if body["heads_unreachable"]:
        lines.append(dt("heads_unreachable", locale, count=body["heads_unreachable"]))
    themes = list(body["comment_themes"].items())[:TOP_THEMES]
    if themes:
        named = ", ".join(f"{THEME_NAMES[name][locale]} ({count})" for name, count in themes)
        lines.append(dt("themes", locale, themes=named))

    officers = next((unit.officers for unit in report.units if unit.officers), None)
    if officers:
        lines.append("")
        lines.append(dt("officers", locale, minimum=minimum) + ":")
        for officer in officers:
            lines.append(
                f"• {officer['officer']}: {percent(officer['sipas_index'], locale)} "
                f"({officer['responses']})"
            )

    text = "\n".join(lines)
    ranking = _ranking(report, locale)
    if not ranking:
        return text[:max_chars]
    header = "\n\n" + dt("ranking", locale) + ":"
    shown: list[str] = []
    for position, line in enumerate(ranking):
        left_after = len(ranking) - position - 1
        tail = [dt("ranking_more", locale, count=left_after)] if left_after else []
        if len(text + header + "\n" + "\n".join([*shown, line, *tail])) > max_chars:
            rest = dt("ranking_more", locale, count=len(ranking) - position)
            return (text + header + "\n" + "\n".join([*shown, rest]))[:max_chars]
        shown.append(line)
    return text + header + "\n" + "\n".join(shown)


def _shown(figures: Figures) -> float | None:
    value: float | None = figures.as_json()["sipas_index"]
    return value


def _ranking(report: Report, locale: str) -> list[str]:
    """The units below the scope's own, best first; those with too few responses last."""
    if len(report.units) < 2:
        return []
    scope_code = report.scope.code if report.scope is not None else None
    # The scope's own unit is the overall figure already; a unit with no survey has no line.
    units = [
        unit
        for unit in report.units
        if unit.code != scope_code and (unit.counts.responses or unit.counts.surveys_sent)
    ]
    ranked = sorted(
        units, key=lambda unit: (unit.index is None, -(unit.index or 0.0), unit.code or "")
    )
    lines = []
    for position, unit in enumerate(ranked, start=1):
        body = unit.as_json()
        if body["sipas_index"] is None:
            value = dt("too_few_short", locale)
            lines.append(f"– {unit.name}: {value} ({body['responses']})")
            continue
        arrow = ARROWS.get(body["trend"] or "same", "")
        lines.append(
            f"{position}. {unit.name}: {percent(body['sipas_index'], locale)}{arrow} "
            f"({body['responses']})"
        )
    return lines
