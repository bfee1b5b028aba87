"""What each dashboard page shows, assembled from the weekly report (the same `build_report`
as `GET /api/v1/reports/weekly`) and a few small reads of one scope: comments and complaints.

Values stay raw here (the report's JSON); pages.py formats them with the digest's helpers.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from bot.app import Services
from bot.digest.render import chart_png, load_history
from bot.digest.report import weekly_report
from bot.digest.snapshots import stored_weeks
from handlers.digest import Report, UnitTree, Week, build_report, history_points, load_tree
from handlers.questionnaire import FACTORS, available_questionnaires, load_questionnaire
from storage.repositories import dashboard_pages as repo
from storage.repositories.reports import begin_reading

__all__ = [
    "COMMENTS_SHOWN",
    "ESCALATIONS_SHOWN",
    "SORTS",
    "Overview",
    "UnitPage",
    "in_scope",
    "overview",
    "scope_tree",
    "unit_chart",
    "unit_page",
]

COMMENTS_SHOWN = 30  # newest first; the rest are counted
ESCALATIONS_SHOWN = 30
DIPS_SHOWN = 3


def _position(body: dict[str, Any]) -> int | None:
    rank = body["rank"]
    return None if rank is None else int(rank["position"])


# Sortable columns: the value each row is sorted by (None sorts last either way).
SORTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "unit": lambda body: None,  # the tree's order
    "index": lambda body: body["sipas_index"],
    "responses": lambda body: body["responses"],
    "rate": lambda body: body["response_rate"],
    "change": lambda body: body["change"],
    "rank": _position,
    "open": lambda body: body["escalations"]["open_now"],
    "breaches": lambda body: body["escalations"]["sla_breaches"],
    "overdue": lambda body: body["cases_overdue"],
    "apologies": lambda body: body["apologies_sent"],
}


async def scope_tree(services: Services) -> UnitTree:
    async with services.sessions() as session:
        await begin_reading(session)
        return await load_tree(session)


def in_scope(tree: UnitTree, scope_code: str, code: str) -> bool:
    """Whether `code` is the scope's unit or below it (unknown codes are not)."""
    scope = tree.by_code.get(scope_code)
    unit = tree.by_code.get(code)
    if scope is None or unit is None:
        return False
    seen: set[int] = set()
    current: int | None = unit.id
    while current is not None and current not in seen:
        if current == scope.id:
            return True
        seen.add(current)
        current = tree.by_id[current].parent_id
    return False


# --- the overview ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A unit's own figures (the report's JSON) and its depth below the scope."""

    body: dict[str, Any]
    depth: int


@dataclass(frozen=True)
class Fall:
    """A unit whose index fell beyond noise, and where it is weakest."""

    body: dict[str, Any]
    weakest_factor: tuple[str, float] | None
    lowest_item: dict[str, Any] | None


@dataclass(frozen=True)
class Overview:
    report: Report
    overall: dict[str, Any]
    rows: list[Row]
    falls: list[Fall]  # down beyond noise
    dips: list[Fall]  # when none fell beyond noise: the largest drops, marked as within it


def _depths(report: Report) -> dict[str | None, int]:
    """Depth of each unit below the scope, from the report's parent codes (tree order)."""
    depths: dict[str | None, int] = {}
    for unit in report.units:
        depths[unit.code] = depths[unit.parent_code] + 1 if unit.parent_code in depths else 0
    return depths


def sorted_rows(rows: Sequence[Row], sort: str, descending: bool) -> list[Row]:
    if sort == "unit":
        return list(reversed(rows)) if descending else list(rows)
    key = SORTS[sort]
    present = [row for row in rows if key(row.body) is not None]
    absent = [row for row in rows if key(row.body) is None]
    present.sort(key=lambda row: key(row.body), reverse=descending)  # stable: tree order ties
    return present + absent


def _fall(body: dict[str, Any]) -> Fall:
    factors = [
        (name, body["factors"][name]) for name in FACTORS if body["factors"][name] is not None
    ]
    weakest = min(factors, key=lambda pair: pair[1]) if factors else None
    lowest = body["lowest_items"][0] if body["lowest_items"] else None
    return Fall(body=body, weakest_factor=weakest, lowest_item=lowest)


async def overview(
    services: Services, scope_code: str, week: Week, sort: str, descending: bool
) -> Overview:
    """The scope's week: the same call as the JSON report's, so the numbers are its own."""
    report = await weekly_report(services, week.label, scope_code)
    depths = _depths(report)
    rows = [Row(body=unit.as_json(), depth=depths[unit.code]) for unit in report.units]
    falls = [_fall(row.body) for row in rows if row.body["trend"] == "down"]
    falls.sort(key=lambda fall: (fall.body["change"] or 0.0, fall.body["unit_code"]))
    # "Which unit fell this week?" still gets an answer when none fell beyond noise, said
    # to be within it: an official sees the drift before it is significant.
    dips: list[Fall] = []
    if not falls:
        dropped = [row.body for row in rows if (row.body["change"] or 0.0) < 0]
        dropped.sort(key=lambda body: (body["change"], body["unit_code"]))
        dips = [_fall(body) for body in dropped[:DIPS_SHOWN]]
    return Overview(
        report=report,
        overall=report.overall.as_json(),
        rows=sorted_rows(rows, sort, descending),
        falls=falls,
        dips=dips,
    )


# --- the unit page ---------------------------------------------------------------------


@dataclass(frozen=True)
class Comment:
    at: datetime
    unit_code: str
    unit_name: str
    text: str  # as written; the page masks phone numbers


@dataclass(frozen=True)
class Step:
    kind: str
    level: int
    unit_name: str | None
    at: datetime
    took: timedelta | None  # since the step before


@dataclass(frozen=True)
class Complaint:
    ref: str
    case_code: str
    reason: str
    severity: str
    status: str
    level: int
    holder_name: str
    origin_name: str
    opened_at: datetime
    steps: list[Step]


@dataclass(frozen=True)
class UnitPage:
    report: Report
    body: dict[str, Any]  # the scope's figures (the unit and below), as in its digest
    previous_factors: dict[str, float | None]
    children: list[dict[str, Any]]  # the units right below, their own figures
    parent: tuple[str, str] | None  # (code, name) when the parent is in the viewer's scope
    comments: list[Comment]
    comments_total: int
    complaints: list[Complaint]
    complaints_total: int
    officers: Sequence[dict[str, Any]] | None

    @property
    def has_children(self) -> bool:
        return len(self.report.units) > 1


@cache
def _comment_question_ids() -> frozenset[str]:
    ids: set[str] = set()
    for name in available_questionnaires():
        question = load_questionnaire(name).by_role("comment")
        if question is not None:
            ids.add(question.id)
    return frozenset(ids)


def _steps(events: Sequence[repo.EventRow], tree: UnitTree) -> list[Step]:
    steps: list[Step] = []
    before: datetime | None = None
    for event in events:
        unit = tree.by_id.get(event.unit_id) if event.unit_id is not None else None
        steps.append(
            Step(
                kind=event.kind,
                level=event.level,
                unit_name=None if unit is None else unit.name,
                at=event.at,
                took=None if before is None else event.at - before,
            )
        )
        before = event.at
    return steps


async def unit_page(
    services: Services,
    code: str,
    week: Week,
    *,
    viewer_scope: str,
    with_officers: bool,
) -> UnitPage:
    """One unit's week; per-officer figures only when `with_officers` (its head's)."""
    settings = services.settings
    tz = settings.timezone
    async with services.sessions() as session, services.sessions() as side:
        report = await build_report(
            session,
            week,
            tz,
            settings.digest_min_responses,
            code,
            with_officers=with_officers,
            side_session=side,
            # The unit's figures from the stored weeks, as the overview and the API read them.
            closed=stored_weeks(services),
        )
    async with services.sessions() as session:
        await begin_reading(session)
        tree = await load_tree(session)
        scope = tree.find(code)
        ids = tree.subtree(scope.id)
        start, end = week.start(tz), week.end(tz)
        comment_rows = await repo.recent_comments(
            session, start, end, _comment_question_ids(), ids, COMMENTS_SHOWN
        )
        escalations, complaints_total = await repo.scope_escalations(
            session, start, end, ids, ESCALATIONS_SHOWN
        )
        events = await repo.trails(session, [row.id for row in escalations])
    by_escalation: dict[int, list[repo.EventRow]] = {}
    for event in events:
        by_escalation.setdefault(event.escalation_id, []).append(event)
    complaints = [
        Complaint(
            ref=row.ref,
            case_code=row.case_code,
            reason=row.reason,
            severity=row.severity,
            status=row.status,
            level=row.level,
            holder_name=tree.by_id[row.holder_unit_id].name,
            origin_name=tree.by_id[row.origin_unit_id].name,
            opened_at=row.opened_at,
            steps=_steps(by_escalation.get(row.id, []), tree),
        )
        for row in escalations
    ]
    comments = [
        Comment(
            at=row.completed_at,
            unit_code=tree.by_id[row.unit_id].code,
            unit_name=tree.by_id[row.unit_id].name,
            text=row.text,
        )
        for row in comment_rows
    ]
    own = report.units[0]
    parent = tree.by_id.get(scope.parent_id) if scope.parent_id is not None else None
    shown_parent = (
        (parent.code, parent.name)
        if parent is not None and in_scope(tree, viewer_scope, parent.code)
        else None
    )
    return UnitPage(
        report=report,
        body=report.overall.as_json(),
        previous_factors=report.overall.previous_factor_indices(),
        children=[unit.as_json() for unit in report.units if unit.parent_code == code],
        parent=shown_parent,
        comments=comments,
        comments_total=report.overall.counts.comments,
        complaints=complaints,
        complaints_total=complaints_total,
        officers=own.officers if with_officers else None,
    )


async def unit_chart(services: Services, code: str, week: Week, locale: str) -> bytes:
    """The digest's chart of the unit's scope: factors this week, the index of eight weeks."""
    report = await weekly_report(services, week.label, code)
    weeks, tree = await load_history(services, report)
    assert report.scope is not None
    points = history_points(
        weeks, tree.subtree(report.scope.id), services.settings.digest_min_responses
    )
    # Drawing takes 200-250 ms and the figures of a closed week rarely change: a chart is
    # kept by what it shows (so a changed figure draws anew), a few dozen of them.
    key = hashlib.sha256(
        repr((code, week.label, locale, report.overall.as_json(), points)).encode()
    ).hexdigest()
    png = _CHARTS.get(key)
    if png is None:
        png = await asyncio.to_thread(chart_png, report, points, locale)
        _CHARTS[key] = png
        while len(_CHARTS) > CHARTS_KEPT:
            del _CHARTS[next(iter(_CHARTS))]
    return png


CHARTS_KEPT = 64
_CHARTS: dict[str, bytes] = {}  # oldest first
