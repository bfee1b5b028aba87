"""The weekly report of one scope (docs/contract.md section 6): every figure a digest shows.

The database counts per unit (`storage/repositories/reports.py`); this module rolls the counts
up to a scope (a unit and every unit below it) by adding them, applies the SIPAS formula
(`handlers/sipas_index.py`), and hides every figure of fewer responses than the minimum.

Entries of `units` are each unit's own cases; `overall` is the whole scope, counted over all
its units' responses together (not a mean of the units' indices). A unit is ranked among its
siblings (units with the same parent) that are in the report and have an index. Counts that
depend on "now" (complaints still open, past their SLA) are taken at the end of the week, so
the report of a past week does not change as they move on (cases still overdue excepted, see
`storage.repositories.reports.case_counts`).

Stored weeks (DESIGN). Counting a week of a million responses takes 1-2 s; a dashboard page
may not. So the per unit `Counts` of a closed week (ended `CLOSED_AFTER` ago) are counted once
for the whole tree and stored (`report_snapshots`), and every reader takes them from there:
the API and `digest --format json` (`build_report`), the digest sweep and its charts
(`scope_history`), the dashboard. One computation (the functions `week_counts` is made of),
stored or not, so every reader shows the same figures: what is stored is what they return for
every unit, and the figures are made from it as before (roll-up, formula, minimum). Officers'
figures are always counted (one unit, small).

A week is stored in two parts that change for different reasons (`SURVEY_PART`,
`CASE_PART`): what its responses say (ratings, responses, invitations, informal payments,
comment themes: most of the cost, and fixed once the week is over) and its complaints and
late cases (escalations and their events, cases overdue, apologies: cheap, and changed later
by actions on older escalations and cases). The index, its history and the trend read only
the first part.

A stored part must never be stale, although a closed week's counts can still change (a case
posted late with a past resolution, an old escalation acknowledged or reminded, a late case
resolved, a case moved to another unit, a test writing into a past week). Database triggers
(`storage/snapshot_triggers.py`) delete a part on any write that could change it, whatever
code writes; a reader that finds no part counts it again. The race between counting and
writing is closed by a claim: before counting, the reader commits the part's row without
counts and with a random token; a write that could change the part after that deletes the
claim; the counts are stored only if the claim is still there and still ours. On SQLite
writers are serialised, so a committed claim means no write is half done; on PostgreSQL the
reader first waits for the writes in flight when it claimed (`wait_for_writers`). Two readers
counting the same part both succeed; the later claim is the one stored. The current week
(and one that ended less than `CLOSED_AFTER` ago) is never stored.

`cases_overdue` counts cases still open *now* whose promised date fell before the week's end
(`case_counts`), so it drifts for old weeks; a stored week follows it exactly, because what
makes it drift (a late open case resolved, or given a new date) is a write of that case,
which deletes the complaints' part of every week after its promised date. So do SLA breaches
of escalations whose deadlines move later (reminders), and late recovery ratings. The API and
the dashboard, reading the same stored part, always agree, and agree with a live count.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import statistics
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from handlers.comment_themes import count_themes
from handlers.errors import InvalidInput, NotFound
from handlers.questionnaire import FACTORS, available_questionnaires, load_questionnaire
from handlers.sipas_index import (
    IndexFigures,
    ItemTally,
    compute_index,
    one_decimal,
    trend,
    wilson_interval,
)
from storage.repositories import reports as repo
from storage.repositories.reports import UnitRow

__all__ = [
    "CLOSED_AFTER",
    "HISTORY_WEEKS",
    "ClosedWeeks",
    "Counts",
    "Figures",
    "Report",
    "Week",
    "build_report",
    "counts_basis",
    "counts_from_json",
    "counts_to_json",
    "joined_parts",
    "part_counts",
    "scope_history",
]

HISTORY_WEEKS = 8
# A week is stored once it ended this long ago: a response completed at 23:59:59 on Sunday may
# be committed a moment later (the triggers would catch it, but not counting twice is cheaper).
CLOSED_AFTER = timedelta(minutes=10)
LOWEST_ITEMS = 3
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


@dataclass(frozen=True, order=True)
class Week:
    """An ISO week; its bounds are local midnights (Monday to Monday) in the given zone."""

    year: int
    number: int

    @classmethod
    def parse(cls, text: str) -> Week:
        match = _WEEK.match(text.strip())
        if match:
            try:
                date.fromisocalendar(int(match[1]), int(match[2]), 1)
            except ValueError:
                pass
            else:
                return cls(int(match[1]), int(match[2]))
        raise InvalidInput({"week": f"{text!r} is not an ISO week; write it like 2026-W47"})

    @classmethod
    def containing(cls, moment: datetime, tz: ZoneInfo) -> Week:
        year, number, _ = moment.astimezone(tz).isocalendar()
        return cls(year, number)

    @classmethod
    def last(cls, now: datetime, tz: ZoneInfo) -> Week:
        """The last whole week before the one `now` is in."""
        return cls.containing(now, tz).previous()

    @property
    def label(self) -> str:
        return f"{self.year}-W{self.number:02d}"

    @property
    def monday(self) -> date:
        return date.fromisocalendar(self.year, self.number, 1)

    def start(self, tz: ZoneInfo) -> datetime:
        return datetime.combine(self.monday, time(0), tz).astimezone(UTC)

    def end(self, tz: ZoneInfo) -> datetime:
        return self.following().start(tz)

    def previous(self) -> Week:
        year, number, _ = (self.monday - timedelta(days=7)).isocalendar()
        return Week(year, number)

    def following(self) -> Week:
        year, number, _ = (self.monday + timedelta(days=7)).isocalendar()
        return Week(year, number)

    def back(self, weeks: int) -> list[Week]:
        """This week and the `weeks - 1` before it, oldest first."""
        found = [self]
        for _ in range(weeks - 1):
            found.append(found[-1].previous())
        return found[::-1]


def _role_question_ids(role: str) -> frozenset[str]:
    ids: set[str] = set()
    for name in available_questionnaires():
        question = load_questionnaire(name).by_role(role)  # type: ignore[arg-type]
        if question is not None:
            ids.add(question.id)
    return frozenset(ids)


@dataclass
class Counts:
    """What the database counted for one unit and week; adding two gives their sum."""

    surveys_sent: int = 0
    responses: int = 0
    escalated_responses: int = 0
    items: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    informal_payment_reports: int = 0
    escalations_opened: int = 0
    open_now: int = 0
    sla_breaches: int = 0
    recovery_answers: int = 0
    recovery_satisfied: int = 0
    complaints_resolved: int = 0
    complaints_on_time: int = 0
    complaints_on_time_not_unsatisfied: int = 0
    ack_hours: list[float] = field(default_factory=list)
    heads_unreachable: int = 0
    cases_overdue: int = 0
    apologies_sent: int = 0
    themes: Counter[str] = field(default_factory=Counter)
    comments: int = 0  # the week's comments (non-empty), whose themes are counted above
    # The index figures of `items`, once asked for: a stored week's counts are read by many
    # reports in a process (bot/digest/snapshots.py keeps them decoded), and the formula for
    # 700 units is most of a warm report's time. `add` forgets it; nothing else changes the
    # items of counts once they are built.
    _index: IndexFigures | None = field(default=None, init=False, repr=False, compare=False)

    def index_figures(self) -> IndexFigures:
        if self._index is None:
            self._index = compute_index(self.tallies())
        return self._index

    def add(self, other: Counts) -> None:
        # Spelled out rather than looped over names: a scope of 700 units adds 1,400 counts
        # per warm report, and getattr/setattr made this a fifth of its time.
        self._index = None
        self.surveys_sent += other.surveys_sent
        self.responses += other.responses
        self.escalated_responses += other.escalated_responses
        self.informal_payment_reports += other.informal_payment_reports
        self.escalations_opened += other.escalations_opened
        self.open_now += other.open_now
        self.sla_breaches += other.sla_breaches
        self.recovery_answers += other.recovery_answers
        self.recovery_satisfied += other.recovery_satisfied
        self.complaints_resolved += other.complaints_resolved
        self.complaints_on_time += other.complaints_on_time
        self.complaints_on_time_not_unsatisfied += other.complaints_on_time_not_unsatisfied
        self.heads_unreachable += other.heads_unreachable
        self.cases_overdue += other.cases_overdue
        self.apologies_sent += other.apologies_sent
        self.comments += other.comments
        items = self.items
        for key, (answered, satisfied, score_sum) in other.items.items():
            mine = items.get(key)
            if mine is None:
                items[key] = [answered, satisfied, score_sum]
            else:
                mine[0] += answered
                mine[1] += satisfied
                mine[2] += score_sum
        self.ack_hours.extend(other.ack_hours)
        themes = self.themes
        for theme, count in other.themes.items():
            themes[theme] += count

    def tallies(self) -> list[ItemTally]:
        return [
            ItemTally(question_id, factor, answered, satisfied, score_sum)
            for (question_id, factor), (answered, satisfied, score_sum) in sorted(
                self.items.items()
            )
        ]


# A week's counts are stored in two parts, because they change for different reasons
# (see "Stored weeks" above): what the week's responses say, which stays as it was once the
# week is over, and complaints and late cases, which later actions on older escalations and
# cases keep changing. A change of the second part makes only it counted again (a few hundred
# ms on a million responses), not the responses (1-2 s).
SURVEY_PART = "surveys"
CASE_PART = "cases"
PART_FIELDS: dict[str, tuple[str, ...]] = {
    SURVEY_PART: (
        "surveys_sent",
        "responses",
        "escalated_responses",
        "informal_payment_reports",
        "comments",
    ),
    CASE_PART: (
        "escalations_opened",
        "open_now",
        "sla_breaches",
        "recovery_answers",
        "recovery_satisfied",
        "complaints_resolved",
        "complaints_on_time",
        "complaints_on_time_not_unsatisfied",
        "heads_unreachable",
        "cases_overdue",
        "apologies_sent",
    ),
}
_FORMAT = 3  # 3: comments counted


def counts_basis() -> str:
    """What stored counts mean: their format and the questions counted by role (a changed
    questionnaire counts other answers as informal payments or comments)."""
    roles = ";".join(
        f"{role}={','.join(sorted(_role_question_ids(role)))}"
        for role in ("informal_payment", "comment")
    )
    return f"v{_FORMAT}:{hashlib.sha256(roles.encode()).hexdigest()[:32]}"


def counts_to_json(counts: Mapping[int, Counts], part: str) -> dict[str, Any]:
    """One part of every unit's counts as JSON (unit ids as keys), for `report_snapshots`."""
    units: dict[str, Any] = {}
    for unit_id, unit in counts.items():
        body: dict[str, Any] = {name: getattr(unit, name) for name in PART_FIELDS[part]}
        if part == SURVEY_PART:
            body["items"] = [[q, f, *values] for (q, f), values in sorted(unit.items.items())]
            body["themes"] = dict(unit.themes)
        else:
            body["ack_hours"] = list(unit.ack_hours)
        units[str(unit_id)] = body
    return {"units": units}


def counts_from_json(document: Mapping[str, Any], part: str) -> dict[int, Counts]:
    """Counts with one part set (the other's fields zero), from `counts_to_json`."""
    found: dict[int, Counts] = {}
    for key, body in document["units"].items():
        unit = Counts(**{name: body[name] for name in PART_FIELDS[part]})
        if part == SURVEY_PART:
            unit.items = {(q, f): [a, s, total] for q, f, a, s, total in body["items"]}
            unit.themes = Counter(body["themes"])
        else:
            unit.ack_hours = list(body["ack_hours"])
        found[int(key)] = unit
    return found


def joined_parts(surveys: Mapping[int, Counts], cases: Mapping[int, Counts]) -> dict[int, Counts]:
    """Whole counts from the two parts; the index figures already worked out for the survey
    part are kept (the parts are left as they were: they may be held for other readers)."""
    joined: dict[int, Counts] = {}
    for unit_id in surveys.keys() | cases.keys():
        survey = surveys.get(unit_id) or Counts()
        case = cases.get(unit_id) or Counts()
        unit = Counts(
            items=survey.items,
            themes=survey.themes,
            ack_hours=case.ack_hours,
            **{name: getattr(survey, name) for name in PART_FIELDS[SURVEY_PART]},
            **{name: getattr(case, name) for name in PART_FIELDS[CASE_PART]},
        )
        unit._index = survey.index_figures()
        joined[unit_id] = unit
    return joined


class ClosedWeeks(Protocol):
    """Every unit's counts of closed weeks, stored once (see "Stored weeks" above)."""

    async def counts(
        self, weeks: Sequence[Week], tz: ZoneInfo, *, full: Collection[Week] = ()
    ) -> dict[Week, dict[int, Counts]]:
        """Of `weeks`, those closed: every unit's counts, stored or counted (and stored) now;
        whole (`week_counts`) for the weeks in `full`, the survey part only for the others
        (all the index, its history and its trend need). Weeks not closed yet are left out:
        the caller counts them. The counts returned are shared: read them, never change them."""
        ...


async def week_counts(
    session: AsyncSession,
    week: Week,
    tz: ZoneInfo,
    unit_ids: Collection[int] | None,
    *,
    full: bool = True,
) -> dict[int, Counts]:
    """Per unit counts of one week; `full=False` counts only what the index needs."""
    counts: dict[int, Counts] = {}
    await _index_counts(session, week, tz, unit_ids, counts, invitations=full)
    if full:
        await _other_counts(session, week, tz, unit_ids, counts)
    return counts


def _of(counts: dict[int, Counts], unit_id: int) -> Counts:
    return counts.setdefault(unit_id, Counts())


async def _index_counts(
    session: AsyncSession,
    week: Week,
    tz: ZoneInfo,
    unit_ids: Collection[int] | None,
    counts: dict[int, Counts],
    *,
    invitations: bool,
    escalated: bool = True,
) -> None:
    """Ratings, responses (and invitations): what the index and its interval need; the
    responses with an escalation (for a QĐ 766 rate) unless `escalated` is False."""
    start, end = week.start(tz), week.end(tz)
    for row in await repo.item_tallies(session, start, end, unit_ids):
        _of(counts, row.unit_id).items[(row.question_id, row.factor)] = [
            row.answered,
            row.satisfied,
            row.score_sum,
        ]
    for unit_id, (sent, responses, with_escalation) in (
        await repo.survey_counts(
            session, start, end, unit_ids, invitations=invitations, escalated=escalated
        )
    ).items():
        unit = _of(counts, unit_id)
        unit.surveys_sent, unit.responses, unit.escalated_responses = (
            sent,
            responses,
            with_escalation,
        )


async def _other_counts(
    session: AsyncSession,
    week: Week,
    tz: ZoneInfo,
    unit_ids: Collection[int] | None,
    counts: dict[int, Counts],
    *,
    with_comments: bool = True,
) -> None:
    """Complaints, cases, informal payments and comment themes (unless not `with_comments`)."""
    await _payment_counts(session, week, tz, unit_ids, counts)
    await _case_counts(session, week, tz, unit_ids, counts)
    if with_comments:
        await _comment_counts(session, week, tz, unit_ids, counts)


async def _payment_counts(
    session: AsyncSession,
    week: Week,
    tz: ZoneInfo,
    unit_ids: Collection[int] | None,
    counts: dict[int, Counts],
) -> None:
    start, end = week.start(tz), week.end(tz)
    payment_ids = _role_question_ids("informal_payment")
    for unit_id, yes in (await repo.yes_counts(session, start, end, payment_ids, unit_ids)).items():
        _of(counts, unit_id).informal_payment_reports = yes


async def _case_counts(
    session: AsyncSession,
    week: Week,
    tz: ZoneInfo,
    unit_ids: Collection[int] | None,
    counts: dict[int, Counts],
) -> None:
    """Complaints (escalations and their events), late cases and apologies: `CASE_PART`."""
    start, end = week.start(tz), week.end(tz)
    for unit_id, values in (await repo.escalation_counts(session, start, end, unit_ids)).items():
        unit = _of(counts, unit_id)
        (
            unit.escalations_opened,
            unit.open_now,
            unit.sla_breaches,
            unit.recovery_answers,
            unit.recovery_satisfied,
            unit.complaints_resolved,
            unit.complaints_on_time,
            unit.complaints_on_time_not_unsatisfied,
        ) = values
    for unit_id, opened, acknowledged in await repo.acknowledgements(session, start, end, unit_ids):
        _of(counts, unit_id).ack_hours.append((acknowledged - opened).total_seconds() / 3600)
    for unit_id, unreached in (await repo.unreached_heads(session, start, end, unit_ids)).items():
        _of(counts, unit_id).heads_unreachable = unreached
    for unit_id, (overdue, apologies) in (
        await repo.case_counts(session, start, end, unit_ids)
    ).items():
        unit = _of(counts, unit_id)
        unit.cases_overdue, unit.apologies_sent = overdue, apologies


async def part_counts(
    session: AsyncSession, week: Week, tz: ZoneInfo, part: str
) -> dict[int, Counts]:
    """Every unit's counts of one part of `week` (`SURVEY_PART` or `CASE_PART`); the two
    together are `week_counts`."""
    counts: dict[int, Counts] = {}
    if part == SURVEY_PART:
        await _index_counts(session, week, tz, None, counts, invitations=True)
        await _payment_counts(session, week, tz, None, counts)
        await _comment_counts(session, week, tz, None, counts)
    elif part == CASE_PART:
        await _case_counts(session, week, tz, None, counts)
    else:  # pragma: no cover
        raise ValueError(part)
    return counts


async def _comment_counts(
    session: AsyncSession,
    week: Week,
    tz: ZoneInfo,
    unit_ids: Collection[int] | None,
    counts: dict[int, Counts],
) -> None:
    """The themes of the week's comments, per unit."""
    start, end = week.start(tz), week.end(tz)
    comment_ids = _role_question_ids("comment")
    by_unit: dict[int, list[str]] = {}
    for unit_id, text in await repo.comments(session, start, end, comment_ids, unit_ids):
        if text:
            by_unit.setdefault(unit_id, []).append(text)
    for unit_id, texts in by_unit.items():
        unit = _of(counts, unit_id)
        unit.themes.update(count_themes(texts))
        unit.comments = len(texts)


def _share(part: int, whole: int) -> float | None:
    return None if whole <= 0 else part / whole


def _percent(part: int, whole: int) -> float | None:
    share = _share(part, whole)
    return None if share is None else one_decimal(100 * share)


@dataclass(frozen=True)
class Figures:
    """One row of the report: a unit's own figures, or a scope's."""

    code: str | None
    name: str
    parent_code: str | None
    counts: Counts
    previous: Counts
    min_responses: int
    officers: tuple[dict[str, Any], ...] | None = None
    rank: tuple[int, int] | None = None

    @property
    def figures(self) -> IndexFigures:
        """The week's index figures, unrounded (computed once per counts)."""
        return self.counts.index_figures()

    @property
    def previous_figures(self) -> IndexFigures:
        return self.previous.index_figures()

    @property
    def enough(self) -> bool:
        return self.counts.responses >= self.min_responses

    @property
    def index(self) -> float | None:
        """The unrounded SIPAS index, or None below the minimum."""
        if not self.enough:
            return None
        return self.figures.sipas_index

    @property
    def previous_index(self) -> float | None:
        if self.previous.responses < self.min_responses:
            return None
        return self.previous_figures.sipas_index

    @property
    def interval(self) -> tuple[float, float] | None:
        index = self.index
        if index is None:
            return None
        return wilson_interval(index / 100, self.counts.responses)

    @property
    def trend(self) -> str | None:
        return trend(
            self.index, self.counts.responses, self.previous_index, self.previous.responses
        )

    def factor_indices(self) -> dict[str, float | None]:
        if not self.enough:
            return dict.fromkeys(FACTORS)
        figures = self.figures
        return {name: one_decimal(f.index) for name, f in figures.factors.items()}

    def previous_factor_indices(self) -> dict[str, float | None]:
        if self.previous.responses < self.min_responses:
            return dict.fromkeys(FACTORS)
        figures = self.previous_figures
        return {name: one_decimal(f.index) for name, f in figures.factors.items()}

    def lowest_items(self) -> list[dict[str, Any]]:
        if not self.enough:
            return []
        rated = [
            item
            for item in self.counts.tallies()
            if item.answered >= self.min_responses and item.rate is not None
        ]
        rated.sort(key=lambda item: (item.rate, item.question_id))
        return [
            {
                "question_id": item.question_id,
                "factor": item.factor,
                "rate": one_decimal(item.rate),
                "answered": item.answered,
            }
            for item in rated[:LOWEST_ITEMS]
        ]

    def as_json(self) -> dict[str, Any]:
        counts = self.counts
        index = self.index
        interval = self.interval
        previous = self.previous_index
        change = None if index is None or previous is None else one_decimal(index - previous)
        mean_scores: dict[str, float | None] = dict.fromkeys(FACTORS)
        if self.enough:
            figures = self.figures
            mean_scores = {
                name: None if f.mean_score is None else round(f.mean_score, 2)
                for name, f in figures.factors.items()
            }
        ack = statistics.median(counts.ack_hours) if counts.ack_hours else None
        body: dict[str, Any] = {
            "unit_code": self.code,
            "unit_name": self.name,
            "surveys_sent": counts.surveys_sent,
            "responses": counts.responses,
            "response_rate": None
            if counts.surveys_sent == 0
            else round(counts.responses / counts.surveys_sent, 3),
            "sipas_index": one_decimal(index),
            "factors": self.factor_indices(),
            "escalations": {
                "opened": counts.escalations_opened,
                "open_now": counts.open_now,
                "sla_breaches": counts.sla_breaches,
                "median_hours_to_acknowledge": None if ack is None else round(ack, 1),
                "recovery_rate": _percent(counts.recovery_satisfied, counts.recovery_answers),
            },
            "cases_overdue": counts.cases_overdue,
            "apologies_sent": counts.apologies_sent,
            # Beyond the contract's example (extensions, never renames):
            "parent_code": self.parent_code,
            "too_few_responses": not self.enough,
            "mean_scores": mean_scores,
            "confidence_interval": None
            if interval is None
            else {"low": one_decimal(100 * interval[0]), "high": one_decimal(100 * interval[1])},
            "previous_sipas_index": one_decimal(previous),
            "change": change,
            "trend": self.trend,
            "rank": None if self.rank is None else {"position": self.rank[0], "of": self.rank[1]},
            "lowest_items": self.lowest_items(),
            "informal_payment_reports": counts.informal_payment_reports,
            "heads_unreachable": counts.heads_unreachable,
            "comments": counts.comments,
            "comment_themes": dict(
                sorted(counts.themes.items(), key=lambda item: (-item[1], item[0]))
            ),
            "qd766": {
                "complaints_resolved_on_time": _percent(
                    counts.complaints_on_time, counts.complaints_resolved
                ),
                "complaints_not_unsatisfied_or_overdue": _percent(
                    counts.complaints_on_time_not_unsatisfied, counts.complaints_resolved
                ),
                "cases_not_unsatisfied_complained_or_overdue": _percent(
                    counts.responses - counts.escalated_responses, counts.responses
                )
                if self.enough
                else None,
            },
        }
        if self.officers is not None:
            body["officers"] = list(self.officers)
        return body


@dataclass(frozen=True)
class Report:
    week: Week
    timezone: str
    scope: UnitRow | None
    overall: Figures
    units: tuple[Figures, ...]
    min_responses: int

    def as_json(self) -> dict[str, Any]:
        return {
            "week": self.week.label,
            "timezone": self.timezone,
            "scope": None if self.scope is None else self.scope.code,
            "min_responses": self.min_responses,
            "overall": self.overall.as_json(),
            "units": [unit.as_json() for unit in self.units],
        }

    def unit(self, code: str) -> Figures:
        return next(figures for figures in self.units if figures.code == code)

    @property
    def weakest_unit(self) -> Figures | None:
        ranked = [unit for unit in self.units if unit.index is not None]
        return (
            min(ranked, key=lambda unit: (unit.index, unit.code or "")) if len(ranked) > 1 else None
        )


class UnitTree:
    """The units, with parents and children, looked up by id and code."""

    def __init__(self, rows: Iterable[UnitRow]) -> None:
        self.by_id = {row.id: row for row in rows}
        self.by_code = {row.code: row for row in self.by_id.values()}
        self.children: dict[int | None, list[int]] = {}
        for row in self.by_id.values():
            self.children.setdefault(row.parent_id, []).append(row.id)
        for ids in self.children.values():
            ids.sort(key=lambda unit_id: self.by_id[unit_id].code)

    def find(self, code: str) -> UnitRow:
        row = self.by_code.get(code)
        if row is None:
            raise NotFound(f"unknown unit {code!r}")
        return row

    def subtree(self, unit_id: int) -> list[int]:
        """The unit and every unit below it, depth first, in code order among siblings."""
        found: list[int] = []
        stack = [unit_id]
        while stack:
            current = stack.pop()
            found.append(current)
            stack.extend(reversed(self.children.get(current, [])))
        return found

    def everything(self) -> list[int]:
        found: list[int] = []
        for root in self.children.get(None, []):
            found.extend(self.subtree(root))
        return found

    def code(self, unit_id: int | None) -> str | None:
        return None if unit_id is None else self.by_id[unit_id].code


async def load_tree(session: AsyncSession) -> UnitTree:
    return UnitTree(await repo.units(session))


def _rolled(counts: Mapping[int, Counts], unit_ids: Iterable[int]) -> Counts:
    total = Counts()
    for unit_id in unit_ids:
        found = counts.get(unit_id)
        if found is not None:
            total.add(found)
    return total


def _ranks(figures: Sequence[Figures], tree: UnitTree) -> list[Figures]:
    """Ranks each unit among its siblings in the report (by index, highest first)."""
    groups: dict[str | None, list[Figures]] = {}
    for unit in figures:
        if unit.index is not None:
            groups.setdefault(unit.parent_code, []).append(unit)
    ranks: dict[str | None, tuple[int, int]] = {}
    for siblings in groups.values():
        if len(siblings) < 2:
            continue
        ordered = sorted(siblings, key=lambda unit: (-(unit.index or 0.0), unit.code or ""))
        for position, unit in enumerate(ordered, start=1):
            ranks[unit.code] = (position, len(ordered))
    return [replace(unit, rank=ranks.get(unit.code)) for unit in figures]


def scope_report(
    week: Week,
    tz: ZoneInfo,
    tree: UnitTree,
    scope: UnitRow | None,
    counts: Mapping[int, Counts],
    previous: Mapping[int, Counts],
    min_responses: int,
    *,
    officers: tuple[dict[str, Any], ...] | None = None,
) -> Report:
    """The report of one scope from per unit counts of the whole tree (or more than it)."""
    unit_ids = tree.everything() if scope is None else tree.subtree(scope.id)
    units = [
        Figures(
            code=row.code,
            name=row.name,
            parent_code=tree.code(row.parent_id),
            counts=counts.get(row.id, Counts()),
            previous=previous.get(row.id, Counts()),
            min_responses=min_responses,
            officers=officers if scope is not None and row.id == scope.id else None,
        )
        for row in (tree.by_id[unit_id] for unit_id in unit_ids)
    ]
    roots = tree.children.get(None, [])
    overall = Figures(
        code=scope.code if scope else (tree.code(roots[0]) if len(roots) == 1 else None),
        name=scope.name if scope else (tree.by_id[roots[0]].name if len(roots) == 1 else "*"),
        parent_code=tree.code(scope.parent_id) if scope else None,
        counts=_rolled(counts, unit_ids),
        previous=_rolled(previous, unit_ids),
        min_responses=min_responses,
    )
    return Report(
        week=week,
        timezone=tz.key,
        scope=scope,
        overall=overall,
        units=tuple(_ranks(units, tree)),
        min_responses=min_responses,
    )


async def build_report(
    session: AsyncSession,
    week: Week,
    tz: ZoneInfo,
    min_responses: int,
    unit_code: str | None = None,
    *,
    with_officers: bool = False,
    side_session: AsyncSession | None = None,
    closed: ClosedWeeks | None = None,
) -> Report:
    """The report of `unit_code`'s scope (every unit when None) for `week`.

    `with_officers` adds per officer figures of the scope's own unit, for its head's digest
    only, and only for officers with at least `min_responses` responses. With a
    `side_session` (a second connection), the previous week is counted on it at the same time.
    With `closed`, the counts of closed weeks come from there (stored; see "Stored weeks"),
    before `session` reads anything. Call it outside any write transaction: a week not stored
    yet is claimed and stored on connections of its own (on SQLite they would wait for the
    caller's write lock; on PostgreSQL for the caller's transaction to end, up to 2 s, and
    then not store). An audit entry, say, is written after the report, not around it.
    """
    stored: dict[Week, dict[int, Counts]] = {}
    if closed is not None:
        stored = await closed.counts([week, week.previous()], tz, full=[week])
    for reader in (session, side_session):
        if reader is not None:
            await repo.begin_reading(reader)
    tree = await load_tree(session)
    scope = tree.find(unit_code) if unit_code is not None else None
    unit_ids = None if scope is None else tree.subtree(scope.id)
    counts: dict[int, Counts]
    previous: dict[int, Counts]
    if week in stored or week.previous() in stored:
        # One of the two is stored (the previous week, when this one is the current week):
        # the other is counted alone.
        if week in stored:
            counts = stored[week]
        else:
            counts = await week_counts(session, week, tz, unit_ids)
        previous = stored.get(week.previous(), {})
        if week.previous() not in stored:
            await _index_counts(
                session, week.previous(), tz, unit_ids, previous, invitations=False, escalated=False
            )
    elif side_session is None:
        counts = await week_counts(session, week, tz, unit_ids)
        # Of the previous week the report shows only the index, its factors and the trend.
        previous = {}
        await _index_counts(
            session, week.previous(), tz, unit_ids, previous, invitations=False, escalated=False
        )
    else:
        # Two connections share the work, about evenly (measured): this week's index counts
        # and comments on one; the previous week's index counts, then this week's other
        # counts, on the other.
        counts, previous = {}, {}

        async def side() -> None:
            await _index_counts(
                side_session,
                week.previous(),
                tz,
                unit_ids,
                previous,
                invitations=False,
                escalated=False,
            )
            await _other_counts(side_session, week, tz, unit_ids, counts, with_comments=False)

        async def main() -> None:
            await _index_counts(session, week, tz, unit_ids, counts, invitations=True)
            await _comment_counts(session, week, tz, unit_ids, counts)

        await asyncio.gather(main(), side())
    officers = None
    if with_officers and scope is not None:
        officers = await officer_figures(session, week, tz, scope.id, min_responses)
    return scope_report(week, tz, tree, scope, counts, previous, min_responses, officers=officers)


async def officer_figures(
    session: AsyncSession, week: Week, tz: ZoneInfo, unit_id: int, min_responses: int
) -> tuple[dict[str, Any], ...]:
    """Officers of one unit with at least `min_responses` responses: responses and index."""
    start, end = week.start(tz), week.end(tz)
    responses = await repo.officer_responses(session, start, end, unit_id)
    shown = {officer for officer, count in responses.items() if count >= min_responses}
    if not shown:
        return ()
    tallies: dict[int, list[ItemTally]] = {}
    for row in await repo.item_tallies(session, start, end, [unit_id], by_officer=True):
        if row.officer_id in shown:
            tallies.setdefault(row.officer_id, []).append(
                ItemTally(row.question_id, row.factor, row.answered, row.satisfied, row.score_sum)
            )
    names = await repo.officer_names(session, shown)
    found: list[dict[str, Any]] = [
        {
            "officer": names.get(officer, str(officer)),
            "responses": responses[officer],
            "sipas_index": one_decimal(compute_index(tallies.get(officer, [])).sipas_index),
        }
        for officer in shown
    ]
    found.sort(key=lambda item: (-(item["sipas_index"] or 0.0), item["officer"]))
    return tuple(found)


@dataclass(frozen=True)
class HistoryPoint:
    week: Week
    responses: int
    sipas_index: float | None
    interval: tuple[float, float] | None
    factors: dict[str, float | None]


async def scope_history(
    session: AsyncSession,
    week: Week,
    tz: ZoneInfo,
    unit_ids: Collection[int] | None,
    weeks: int = HISTORY_WEEKS,
    *,
    closed: ClosedWeeks | None = None,
) -> dict[Week, dict[int, Counts]]:
    """Per unit counts (index figures at least) of the `weeks` weeks up to `week`, of the
    units `unit_ids` (or more: a stored week has every unit's). With `closed`, closed weeks
    come from there; the others are counted on `session`, which must be a reader's
    (`repo.begin_reading`): on SQLite a session holding the write lock would keep the closed
    weeks' claims waiting."""
    wanted = week.back(weeks)
    stored = {} if closed is None else await closed.counts(wanted, tz)
    return {
        each: stored[each]
        if each in stored
        else await week_counts(session, each, tz, unit_ids, full=False)
        for each in wanted
    }


def history_points(
    history: Mapping[Week, Mapping[int, Counts]], unit_ids: Iterable[int], min_responses: int
) -> list[HistoryPoint]:
    """The scope's index per week, from `scope_history`, oldest first."""
    ids = list(unit_ids)
    points = []
    for week in sorted(history):
        figures = Figures(
            code=None,
            name="",
            parent_code=None,
            counts=_rolled(history[week], ids),
            previous=Counts(),
            min_responses=min_responses,
        )
        points.append(
            HistoryPoint(
                week=week,
                responses=figures.counts.responses,
                sipas_index=one_decimal(figures.index),
                interval=figures.interval,
                factors=figures.factor_indices(),
            )
        )
    return points
