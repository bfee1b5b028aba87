"""The digest's files: a PNG chart (matplotlib, Agg), an XLSX workbook (openpyxl) and a CSV.

The chart is drawn for a phone held upright (1080 x 1350 pixels): the five factors this week
against last week, then the SIPAS index of the last eight weeks with its 95% intervals. It uses
DejaVu Sans, matplotlib's own font, which has every Vietnamese letter. The workbook has a
summary sheet (one row per unit of the scope) and one sheet per unit with its last eight
weeks; header rows are frozen and numbers carry number formats.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.app import Services
from bot.digest.snapshots import stored_weeks
from handlers.digest import (
    HISTORY_WEEKS,
    Counts,
    HistoryPoint,
    Report,
    UnitTree,
    Week,
    history_points,
    load_tree,
    scope_history,
)
from handlers.digest_text import digest_text, factor_name
from handlers.questionnaire import FACTORS
from storage.repositories import reports as reports_repo

CHART_SIZE = (1080, 1350)
CHART_DPI = 150
_SHEET_FORBIDDEN = str.maketrans({c: "-" for c in "[]:*?/\\"})

SUMMARY_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    # (key in the report JSON, heading, number format)
    ("unit_code", "Mã đơn vị / Unit code", None),
    ("unit_name", "Đơn vị / Unit", None),
    ("parent_code", "Đơn vị cấp trên / Parent", None),
    ("surveys_sent", "Lời mời / Invitations", "0"),
    ("responses", "Phản hồi / Responses", "0"),
    ("response_rate", "Tỷ lệ phản hồi / Response rate", "0.0%"),
    ("sipas_index", "SIPAS (%)", "0.0"),
    ("factors.access", "Tiếp cận / Access (%)", "0.0"),
    ("factors.procedure", "Thủ tục / Procedure (%)", "0.0"),
    ("factors.civil_servant", "Công chức / Civil servants (%)", "0.0"),
    ("factors.result", "Kết quả / Result (%)", "0.0"),
    ("factors.feedback_handling", "Góp ý / Feedback handling (%)", "0.0"),
    ("confidence_interval.low", "KTC 95% thấp / CI low", "0.0"),
    ("confidence_interval.high", "KTC 95% cao / CI high", "0.0"),
    ("previous_sipas_index", "SIPAS tuần trước / last week", "0.0"),
    ("change", "Thay đổi / Change", "+0.0;-0.0;0.0"),
    ("trend", "Xu hướng / Trend", None),
    ("rank.position", "Xếp hạng / Rank", "0"),
    ("escalations.opened", "Phản ánh mới / Complaints opened", "0"),
    ("escalations.open_now", "Đang mở / Open", "0"),
    ("escalations.sla_breaches", "Quá hạn / Past SLA", "0"),
    ("escalations.median_hours_to_acknowledge", "Giờ tiếp nhận (trung vị) / Hours to ack", "0.0"),
    ("escalations.recovery_rate", "Hài lòng sau xử lý / Recovery (%)", "0.0"),
    ("cases_overdue", "Hồ sơ trễ hạn / Overdue cases", "0"),
    ("apologies_sent", "Thư xin lỗi / Apologies", "0"),
    ("informal_payment_reports", "Nhũng nhiễu / Informal payments", "0"),
    ("heads_unreachable", "Không liên lạc được thủ trưởng / Heads unreachable", "0"),
    ("qd766.complaints_resolved_on_time", "QĐ766 đúng hạn / on time (%)", "0.0"),
    (
        "qd766.cases_not_unsatisfied_complained_or_overdue",
        "QĐ766 hồ sơ không phản ánh / clean cases (%)",
        "0.0",
    ),
)
WEEK_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("week", "Tuần / Week", None),
    ("responses", "Phản hồi / Responses", "0"),
    ("sipas_index", "SIPAS (%)", "0.0"),
    ("low", "KTC 95% thấp / CI low", "0.0"),
    ("high", "KTC 95% cao / CI high", "0.0"),
    *(column for column in SUMMARY_COLUMNS if column[0].startswith("factors.")),
)


@dataclass(frozen=True)
class DigestFiles:
    """What one recipient receives: the message, the chart and the workbook."""

    text: str
    png: bytes
    xlsx: bytes
    stem: str


def pick(row: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path of a report row (`escalations.open_now`), or None."""
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


# --- the chart ------------------------------------------------------------------------------


def chart_png(report: Report, history: Sequence[HistoryPoint], locale: str = "vi") -> bytes:
    """The chart as PNG bytes, CHART_SIZE pixels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    width, height = CHART_SIZE
    figure = Figure(figsize=(width / CHART_DPI, height / CHART_DPI), dpi=CHART_DPI)
    figure.set_layout_engine("constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=[1.1, 1])
    overall = report.overall.as_json()
    name = report.overall.name
    figure.suptitle(f"SIPAS {report.week.label}\n{name}", fontsize=13, fontfamily="DejaVu Sans")

    labels = [factor_name(f, locale) for f in FACTORS]
    this_week = [overall["factors"][f] for f in FACTORS]
    last_week = [report.overall.previous_factor_indices()[f] for f in FACTORS]
    positions = range(len(FACTORS))
    this_label = "Tuần này" if locale == "vi" else "This week"
    last_label = "Tuần trước" if locale == "vi" else "Last week"
    top.barh(
        [p + 0.2 for p in positions],
        [v or 0 for v in last_week],
        height=0.4,
        color="#b0bec5",
        label=last_label,
    )
    bars = top.barh(
        [p - 0.2 for p in positions],
        [v or 0 for v in this_week],
        height=0.4,
        color="#1565c0",
        label=this_label,
    )
    for bar, value in zip(bars, this_week, strict=True):
        text = "—" if value is None else f"{value:.1f}"
        top.text(
            (value or 0) + 1, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=9
        )
    top.set_yticks(list(positions), labels, fontsize=9)
    top.invert_yaxis()
    top.set_xlim(0, 110)
    top.set_xlabel("%", fontsize=9)
    top.legend(loc="lower right", fontsize=8)
    top.set_title("Theo yếu tố" if locale == "vi" else "By factor", fontsize=11)

    weeks = [point.week.label[-3:] for point in history]
    xs = list(range(len(history)))
    shown = [(x, p) for x, p in zip(xs, history, strict=True) if p.sipas_index is not None]
    if shown:
        values = [p.sipas_index or 0.0 for _, p in shown]
        lows = [
            v - 100 * p.interval[0] if p.interval else 0.0
            for v, (_, p) in zip(values, shown, strict=True)
        ]
        highs = [
            100 * p.interval[1] - v if p.interval else 0.0
            for v, (_, p) in zip(values, shown, strict=True)
        ]
        bottom.errorbar(
            [x for x, _ in shown],
            values,
            yerr=[lows, highs],
            fmt="-o",
            color="#1565c0",
            ecolor="#90caf9",
            elinewidth=3,
            capsize=3,
        )
        for (x, _), value in zip(shown, values, strict=True):
            bottom.annotate(
                f"{value:.1f}",
                (x, value),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
            )
    bottom.set_xticks(xs, weeks, fontsize=9)
    floor = min((100 * p.interval[0] for p in history if p.interval), default=0.0)
    bottom.set_ylim(max(0, int(floor // 10) * 10 - 10), 105)
    bottom.set_ylabel("SIPAS (%)", fontsize=9)
    bottom.set_title(
        f"{HISTORY_WEEKS} tuần gần nhất (khoảng tin cậy 95%)"
        if locale == "vi"
        else f"Last {HISTORY_WEEKS} weeks (95% intervals)",
        fontsize=11,
    )
    bottom.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=CHART_DPI)
    return buffer.getvalue()


# --- the workbook and the CSV -----------------------------------------------------------------


def _sheet_title(code: str, taken: set[str]) -> str:
    base = code.translate(_SHEET_FORBIDDEN)[:28] or "unit"
    title, n = base, 1
    while title.lower() in taken:
        n += 1
        title = f"{base[:25]}~{n}"
    taken.add(title.lower())
    return title


def workbook_xlsx(report: Report, per_unit_history: Mapping[str, Sequence[HistoryPoint]]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter

    book = Workbook()
    summary = book.active
    assert summary is not None
    summary.title = "Tong hop"
    taken = {"tong hop"}
    bold = Font(bold=True)
    fill = PatternFill("solid", fgColor="DDEBF7")
    summary.append([f"SIPAS {report.week.label} — {report.overall.name} ({report.timezone})"])
    summary["A1"].font = Font(bold=True, size=13)
    summary.append([heading for _, heading, _ in SUMMARY_COLUMNS])
    for cell in summary[2]:
        cell.font, cell.fill = bold, fill
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    for row in _summary_rows(report):
        summary.append([_cell(row, key) for key, _, _ in SUMMARY_COLUMNS])
    for index, (_, _, fmt) in enumerate(SUMMARY_COLUMNS, start=1):
        letter = get_column_letter(index)
        summary.column_dimensions[letter].width = 28 if index == 2 else 14
        if fmt:
            for (cell,) in summary.iter_rows(min_row=3, min_col=index, max_col=index):
                cell.number_format = fmt
    summary.freeze_panes = "C3"

    for unit in report.units:
        if unit.code is None:
            continue
        sheet = book.create_sheet(_sheet_title(unit.code, taken))
        sheet.append([f"{unit.code} — {unit.name}"])
        sheet["A1"].font = Font(bold=True, size=12)
        sheet.append([heading for _, heading, _ in WEEK_COLUMNS])
        for cell in sheet[2]:
            cell.font, cell.fill = bold, fill
        for point in per_unit_history.get(unit.code, []):
            values = {
                "week": point.week.label,
                "responses": point.responses,
                "sipas_index": point.sipas_index,
                "low": None if point.interval is None else round(100 * point.interval[0], 1),
                "high": None if point.interval is None else round(100 * point.interval[1], 1),
                "factors": point.factors,
            }
            sheet.append([pick(values, key) for key, _, _ in WEEK_COLUMNS])
        for index, (_, _, fmt) in enumerate(WEEK_COLUMNS, start=1):
            sheet.column_dimensions[get_column_letter(index)].width = 14
            if fmt:
                for (cell,) in sheet.iter_rows(min_row=3, min_col=index, max_col=index):
                    cell.number_format = fmt
        sheet.freeze_panes = "B3"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _summary_rows(report: Report) -> list[dict[str, Any]]:
    """The scope's row first (its name marked as the total), then each unit's own."""
    overall = report.overall.as_json()
    overall["unit_name"] = f"Tổng / Total: {overall['unit_name']}"
    return [overall] + [unit.as_json() for unit in report.units]


def _cell(row: Mapping[str, Any], key: str) -> Any:
    value = pick(row, key)
    if isinstance(value, (dict, list)):
        return None
    return value


def summary_csv(report: Report) -> bytes:
    """The summary sheet as CSV: UTF-8 with a BOM, so that Excel reads the Vietnamese."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["week", *[key for key, _, _ in SUMMARY_COLUMNS]])
    for row in _summary_rows(report):
        writer.writerow(
            [
                report.week.label,
                *["" if (v := _cell(row, k)) is None else v for k, _, _ in SUMMARY_COLUMNS],
            ]
        )
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


# --- building them --------------------------------------------------------------------------


History = dict[Week, dict[int, Counts]]


async def load_history(services: Services, report: Report) -> tuple[History, UnitTree]:
    """Per unit counts of the report's last eight weeks, for its scope (or every unit)."""
    settings = services.settings
    async with services.sessions() as session:
        await reports_repo.begin_reading(session)
        tree = await load_tree(session)
        unit_ids = None if report.scope is None else tree.subtree(report.scope.id)
        weeks = await scope_history(
            session, report.week, settings.timezone, unit_ids, closed=stored_weeks(services)
        )
    return weeks, tree


def histories_of(
    weeks: History, tree: UnitTree, report: Report, minimum: int
) -> tuple[list[HistoryPoint], dict[str, list[HistoryPoint]]]:
    """The scope's and each of its units' weekly points, from counts of (at least) the scope."""
    ids = tree.everything() if report.scope is None else tree.subtree(report.scope.id)
    scope_points = history_points(weeks, ids, minimum)
    per_unit = {
        tree.by_id[unit_id].code: history_points(weeks, [unit_id], minimum) for unit_id in ids
    }
    return scope_points, per_unit


async def histories(
    services: Services, report: Report
) -> tuple[list[HistoryPoint], dict[str, list[HistoryPoint]]]:
    weeks, tree = await load_history(services, report)
    return histories_of(weeks, tree, report, services.settings.digest_min_responses)


async def build_files(
    services: Services,
    report: Report,
    locale: str,
    *,
    late: bool = False,
    history: tuple[History, UnitTree] | None = None,
) -> DigestFiles:
    """Text, chart and workbook; `history` (of a wider scope) saves reading it again."""
    weeks, tree = history or await load_history(services, report)
    scope_points, per_unit = histories_of(
        weeks, tree, report, services.settings.digest_min_responses
    )
    png, xlsx = await asyncio.to_thread(
        lambda: (chart_png(report, scope_points, locale), workbook_xlsx(report, per_unit))
    )
    scope = report.scope.code if report.scope is not None else "all"
    return DigestFiles(
        text=digest_text(report, locale, late=late),
        png=png,
        xlsx=xlsx,
        stem=f"sipas-digest-{scope}-{report.week.label}",
    )


async def render(services: Services, report: Report, fmt: str) -> tuple[bytes, str]:
    """One format of the digest for the command line: (bytes, file extension)."""
    locale = services.settings.locale
    if fmt == "text":
        return digest_text(report, locale).encode(), "txt"
    if fmt == "csv":
        return summary_csv(report), "csv"
    scope_points, per_unit = await histories(services, report)
    if fmt == "png":
        return await asyncio.to_thread(chart_png, report, scope_points, locale), "png"
    if fmt == "xlsx":
        return await asyncio.to_thread(workbook_xlsx, report, per_unit), "xlsx"
    raise ValueError(f"unknown format {fmt!r}")


__all__ = [
    "CHART_SIZE",
    "DigestFiles",
    "build_files",
    "chart_png",
    "render",
    "summary_csv",
    "workbook_xlsx",
]
