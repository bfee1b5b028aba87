"""The dashboard's exports over a span of weeks: one row per unit in scope and week, the
figures of docs/contract.md section 6 (and the report's extensions), taken from the weekly
report of each week (the same call as `GET /api/v1/reports/weekly`), as XLSX and CSV.

The workbook follows the digest's (bot/digest/render.py `workbook_xlsx`): a title row, a
bold header row, frozen panes, number formats and widths; the CSV is UTF-8 with a BOM like
`summary_csv`, so that Excel reads the Vietnamese.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from bot.app import Services
from bot.digest.render import SUMMARY_COLUMNS, pick
from bot.digest.report import weekly_report
from handlers.digest import Week

__all__ = ["EXPORT_COLUMNS", "export_csv", "export_rows", "export_xlsx"]

_HEADINGS = {key: heading for key, heading, _ in SUMMARY_COLUMNS}

EXPORT_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    # (key in the report JSON, dotted; heading; number format), in the contract's order
    ("unit_code", _HEADINGS["unit_code"], None),
    ("unit_name", _HEADINGS["unit_name"], None),
    ("parent_code", _HEADINGS["parent_code"], None),
    ("week", "Tuần / Week", None),
    ("surveys_sent", _HEADINGS["surveys_sent"], "0"),
    ("responses", _HEADINGS["responses"], "0"),
    ("response_rate", _HEADINGS["response_rate"], "0.0%"),
    ("sipas_index", _HEADINGS["sipas_index"], "0.0"),
    ("factors.access", _HEADINGS["factors.access"], "0.0"),
    ("factors.procedure", _HEADINGS["factors.procedure"], "0.0"),
    ("factors.civil_servant", _HEADINGS["factors.civil_servant"], "0.0"),
    ("factors.result", _HEADINGS["factors.result"], "0.0"),
    ("factors.feedback_handling", _HEADINGS["factors.feedback_handling"], "0.0"),
    ("escalations.opened", _HEADINGS["escalations.opened"], "0"),
    ("escalations.open_now", _HEADINGS["escalations.open_now"], "0"),
    ("escalations.sla_breaches", _HEADINGS["escalations.sla_breaches"], "0"),
    ("cases_overdue", _HEADINGS["cases_overdue"], "0"),
    ("apologies_sent", _HEADINGS["apologies_sent"], "0"),
    ("confidence_interval.low", _HEADINGS["confidence_interval.low"], "0.0"),
    ("confidence_interval.high", _HEADINGS["confidence_interval.high"], "0.0"),
    ("previous_sipas_index", _HEADINGS["previous_sipas_index"], "0.0"),
    ("change", _HEADINGS["change"], "+0.0;-0.0;0.0"),
    ("trend", _HEADINGS["trend"], None),
    ("rank.position", _HEADINGS["rank.position"], "0"),
    ("rank.of", "Trong số / Of", "0"),
    ("too_few_responses", "Chưa đủ phản hồi / Too few responses", None),
)
_WIDE = {"unit_name": 34, "parent_code": 12, "unit_code": 14, "week": 10}


def _pick(row: Mapping[str, Any], dotted: str) -> Any:
    """A cell's value: the report's, except a mapping or a list (a cell holds one value)."""
    value = pick(row, dotted)
    return None if isinstance(value, (dict, list)) else value


async def export_rows(
    services: Services, scope_code: str, weeks: Sequence[Week]
) -> list[dict[str, Any]]:
    """Per week (oldest first), each unit's row of that week's report, with its week."""
    rows: list[dict[str, Any]] = []
    for week in weeks:
        report = await weekly_report(services, week.label, scope_code)
        for unit in report.units:
            rows.append({"week": week.label, **unit.as_json()})
    return rows


def _values(row: Mapping[str, Any]) -> list[Any]:
    return [_pick(row, key) for key, _, _ in EXPORT_COLUMNS]


def export_xlsx(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "SIPAS"
    sheet.append([title])
    sheet["A1"].font = Font(bold=True, size=13)
    sheet.append([heading for _, heading, _ in EXPORT_COLUMNS])
    bold, fill = Font(bold=True), PatternFill("solid", fgColor="DDEBF7")
    for cell in sheet[2]:
        cell.font, cell.fill = bold, fill
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    for row in rows:
        sheet.append(_values(row))
    for index, (key, _, fmt) in enumerate(EXPORT_COLUMNS, start=1):
        letter = get_column_letter(index)
        sheet.column_dimensions[letter].width = _WIDE.get(key, 13)
        if fmt:
            for (cell,) in sheet.iter_rows(min_row=3, min_col=index, max_col=index):
                cell.number_format = fmt
    sheet.freeze_panes = "C3"  # the header, and the unit's code and name
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def export_csv(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """One header row of the report's keys (dotted), then the rows: UTF-8 with a BOM."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([key for key, _, _ in EXPORT_COLUMNS])
    for row in rows:
        writer.writerow([_csv_value(value) for value in _values(row)])
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")
