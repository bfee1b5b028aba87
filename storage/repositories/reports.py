"""Aggregate queries behind the weekly digest: per unit counts for one UTC interval.

Every figure is counted by the database (GROUP BY over indexed columns, see the migration
`38e346e30372`), so a week of a million responses comes back as a few thousand rows. The
results are additive per unit; `handlers/digest.py` rolls them up to any scope and applies the
SIPAS formula. Only three things come back row by row, all small next to the responses: the
acknowledgement times of the week's acknowledged escalations (for a median, which SQLite
cannot compute), the week's comments (themes are matched on text without diacritics, which
SQL cannot do portably), and the units themselves.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import READ_ONLY
from storage.inserts import insert_for
from storage.models import (
    Answer,
    Apology,
    Case,
    CaseStatus,
    DigestDelivery,
    DigestRecipient,
    Escalation,
    EscalationEvent,
    EscalationStatus,
    Survey,
    Unit,
    UnitHead,
)

SATISFIED_FROM = 4
UNREACHED_EVENTS = ("skipped", "unrouted")


@dataclass(frozen=True)
class UnitRow:
    id: int
    code: str
    name: str
    parent_id: int | None


@dataclass(frozen=True)
class ItemRow:
    """One item of one unit (and, when asked for, one officer): answered, satisfied, sum."""

    unit_id: int
    officer_id: int | None
    question_id: str
    factor: str
    answered: int
    satisfied: int
    score_sum: int


async def begin_reading(session: AsyncSession) -> None:
    """Makes the session's transaction a reader's: on SQLite it takes no write lock, so a
    report that reads for seconds blocks no answer or intake (storage.db.READ_ONLY).

    On PostgreSQL it lowers `random_page_cost` for this transaction only, from the default 4
    (a spinning disk) to 1.1 (SSD, or pages in cache, as a recent week's are): with the
    default the planner hashes whole tables where an index-only scan of the week's answers
    is twice as fast (measured with benchmarks/digest_bench.py).
    """
    if session.in_transaction():
        return
    connection = await session.connection(execution_options={READ_ONLY: True})
    if connection.dialect.name == "postgresql":
        await connection.exec_driver_sql("SET LOCAL random_page_cost = 1.1")


async def units(session: AsyncSession) -> list[UnitRow]:
    rows = await session.execute(select(Unit.id, Unit.code, Unit.name, Unit.parent_id))
    return [UnitRow(*row) for row in rows]


def _completed_in(start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(Survey.completed_at >= start, Survey.completed_at < end)


async def _cases_between(
    session: AsyncSession, moment: Any, start: datetime, end: datetime
) -> list[ColumnElement[bool]]:
    """On PostgreSQL: `cases.id` between the least and greatest case id of the surveys whose
    `moment` (completed_at or invited_at) lies in [start, end).

    Implied by the join, so it changes no count; but it lets PostgreSQL read only that range
    of `pk_cases` (a week's surveys are of recent cases, whose ids lie together) instead of
    hashing the whole cases table for each query (measured: the item tallies of a week of
    125,000 responses from 0.69 s to 0.44 s). The range is read first from the covering
    index on (moment, case_id) and given as literals: the planner estimates a literal range
    well, and a subquery's badly (measured slower than none). At worst the range is the whole
    table, as before. SQLite, which joins by rowid lookups, is slower with it: not used there.
    """
    if session.get_bind().dialect.name != "postgresql":
        return []
    # `case_id + 0`: not the bare column, whose min/max PostgreSQL would look for by walking
    # the unique index on case_id from one end, filtering a million rows (measured 0.24 s),
    # rather than by the index on (moment, case_id) over the interval's rows (0.02 s).
    shifted = Survey.case_id + 0
    query = select(func.min(shifted), func.max(shifted)).where(moment >= start, moment < end)
    lowest, highest = (await session.execute(query)).one()
    if lowest is None or highest is None:
        return []
    # Inline integers, so that the plan is made for this range.
    return [Case.id.between(literal_column(str(int(lowest))), literal_column(str(int(highest))))]


def _in_units(column: Any, unit_ids: Collection[int] | None) -> list[ColumnElement[bool]]:
    return [] if unit_ids is None else [column.in_(list(unit_ids))]


async def item_tallies(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    unit_ids: Collection[int] | None = None,
    *,
    by_officer: bool = False,
) -> list[ItemRow]:
    """Ratings of the surveys completed in [start, end), per unit, item (and officer)."""
    satisfied = func.sum(case((Answer.value_int >= SATISFIED_FROM, 1), else_=0))
    officer = Case.officer_id if by_officer else None
    group: list[Any] = [Case.unit_id, Answer.question_id, Answer.factor]
    if by_officer:
        group.append(Case.officer_id)
    query = (
        select(
            Case.unit_id,
            Answer.question_id,
            Answer.factor,
            func.count(Answer.value_int),
            satisfied,
            func.sum(Answer.value_int),
            *([officer] if officer is not None else []),
        )
        .select_from(Survey)
        .join(Case, Case.id == Survey.case_id)
        .join(Answer, Answer.survey_id == Survey.id)
        .where(
            _completed_in(start, end),
            *await _cases_between(session, Survey.completed_at, start, end),
            Answer.factor.is_not(None),
            Answer.value_int.is_not(None),
            *_in_units(Case.unit_id, unit_ids),
        )
        .group_by(*group)
    )
    rows = await session.execute(query)
    return [
        ItemRow(
            unit_id=row[0],
            officer_id=row[6] if by_officer else None,
            question_id=row[1],
            factor=row[2],
            answered=int(row[3] or 0),
            satisfied=int(row[4] or 0),
            score_sum=int(row[5] or 0),
        )
        for row in rows
    ]


async def _per_unit(session: AsyncSession, query: Any) -> dict[int, tuple[int, ...]]:
    rows = await session.execute(query)
    return {row[0]: tuple(int(value or 0) for value in row[1:]) for row in rows}


async def survey_counts(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    unit_ids: Collection[int] | None,
    *,
    invitations: bool = True,
    escalated: bool = True,
) -> dict[int, tuple[int, ...]]:
    """Per unit: (invitations sent, responses, responses whose case has an escalation); the
    first is 0 without `invitations`, the last 0 without `escalated` (the previous week's
    figures need neither).

    Two queries, each on its own index (invited_at; completed_at), rather than one with an OR
    that neither backend can answer from an index. The responses and those with an
    escalation come from one pass over the interval's surveys, each looked up in the
    (distinct, few) escalated case ids: one join to the cases where there were two.
    """
    counts: dict[int, tuple[int, ...]] = {}
    if invitations:
        invited = (
            select(Case.unit_id, func.count())
            .select_from(Survey)
            .join(Case, Case.id == Survey.case_id)
            .where(
                Survey.invited_at >= start,
                Survey.invited_at < end,
                *await _cases_between(session, Survey.invited_at, start, end),
                *_in_units(Case.unit_id, unit_ids),
            )
            .group_by(Case.unit_id)
        )
        for unit_id, sent in await session.execute(invited):
            counts[unit_id] = (int(sent), 0, 0)
    escalated_cases = select(Escalation.case_id).distinct().subquery()
    with_escalation = func.count(escalated_cases.c.case_id) if escalated else literal_column("0")
    completed = (
        select(Case.unit_id, func.count(), with_escalation)
        .select_from(Survey)
        .join(Case, Case.id == Survey.case_id)
        .where(
            _completed_in(start, end),
            *await _cases_between(session, Survey.completed_at, start, end),
            *_in_units(Case.unit_id, unit_ids),
        )
        .group_by(Case.unit_id)
    )
    if escalated:
        completed = completed.outerjoin(
            escalated_cases, escalated_cases.c.case_id == Survey.case_id
        )
    for unit_id, responses, escalations in await session.execute(completed):
        counts[unit_id] = (counts.get(unit_id, (0,))[0], int(responses), int(escalations or 0))
    return counts


async def yes_counts(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    question_ids: Collection[str],
    unit_ids: Collection[int] | None,
) -> dict[int, int]:
    """Per unit: "yes" answers to the given questions (the informal-payment item).

    Read from the (few: one answer in two hundred in the benchmark) "yes" answers of the
    partial index ix_answers_yes, each then looked up by primary key, rather than from the
    week's surveys, each looked up in the answers: the completion time is wrapped in a
    `coalesce` so that no backend starts from its index (measured on SQLite: 0.09 s to
    0.01 s for a week of 125,000 responses). This reads every "yes" answer ever given, which
    stays far fewer than a week's surveys.
    """
    if not question_ids:
        return {}
    completed = func.coalesce(Survey.completed_at, None)
    query = (
        select(Case.unit_id, func.count())
        .select_from(Answer)
        .join(Survey, Survey.id == Answer.survey_id)
        .join(Case, Case.id == Survey.case_id)
        .where(
            completed >= start,
            completed < end,
            Answer.question_id.in_(list(question_ids)),
            # A literal, so that both backends see the partial index ix_answers_yes applies.
            Answer.value_text == literal_column("'yes'"),
            *_in_units(Case.unit_id, unit_ids),
        )
        .group_by(Case.unit_id)
    )
    return {unit_id: int(count) for unit_id, count in await session.execute(query)}


async def comments(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    question_ids: Collection[str],
    unit_ids: Collection[int] | None,
) -> list[tuple[int, str]]:
    """(unit id, comment text) of the surveys completed in [start, end).

    Fetched at once: a week's comments are a fraction of its responses, and reading them row
    by row through the async driver costs more than holding them (a few MB at most).
    """
    if not question_ids:
        return []
    query = (
        select(Case.unit_id, Answer.value_text)
        .select_from(Survey)
        .join(Case, Case.id == Survey.case_id)
        .join(Answer, Answer.survey_id == Survey.id)
        .where(
            _completed_in(start, end),
            *await _cases_between(session, Survey.completed_at, start, end),
            Answer.question_id.in_(list(question_ids)),
            Answer.value_text.is_not(None),
            *_in_units(Case.unit_id, unit_ids),
        )
    )
    return [(unit_id, text) for unit_id, text in await session.execute(query) if text is not None]


async def escalation_counts(
    session: AsyncSession, start: datetime, end: datetime, unit_ids: Collection[int] | None
) -> dict[int, tuple[int, ...]]:
    """Per unit complained about (the escalation's origin), as of the end of the interval:

    (opened in it, still open at its end, of those past an SLA at its end, recovery answers
    given in it, of those 4-5, resolved in it, of those before the resolve SLA, of those
    before the SLA and not rated 1-2 by the citizen afterwards).
    """
    opened = and_(Escalation.opened_at >= start, Escalation.opened_at < end)
    open_at_end = and_(
        Escalation.opened_at < end,
        or_(Escalation.resolved_at.is_(None), Escalation.resolved_at >= end),
    )
    unacknowledged = or_(Escalation.acknowledged_at.is_(None), Escalation.acknowledged_at >= end)
    breached = and_(
        open_at_end,
        or_(
            and_(unacknowledged, Escalation.ack_due_at < end),
            Escalation.resolve_due_at < end,
        ),
    )
    recovered = and_(Escalation.recovery_at >= start, Escalation.recovery_at < end)
    resolved = and_(
        Escalation.resolved_at >= start,
        Escalation.resolved_at < end,
        Escalation.status == EscalationStatus.RESOLVED,
    )
    on_time = and_(
        resolved,
        or_(
            Escalation.resolve_due_at.is_(None), Escalation.resolved_at <= Escalation.resolve_due_at
        ),
    )
    unsatisfied = and_(
        Escalation.recovery_rating.is_not(None),
        Escalation.recovery_rating < SATISFIED_FROM - 1,
    )

    def count(condition: ColumnElement[bool]) -> Any:
        return func.sum(case((condition, 1), else_=0))

    query = (
        select(
            Escalation.origin_unit_id,
            count(opened),
            count(open_at_end),
            count(breached),
            count(and_(recovered, Escalation.recovery_rating.is_not(None))),
            count(and_(recovered, Escalation.recovery_rating >= SATISFIED_FROM)),
            count(resolved),
            count(on_time),
            count(and_(on_time, ~unsatisfied)),
        )
        .where(
            or_(opened, open_at_end, recovered, resolved),
            *_in_units(Escalation.origin_unit_id, unit_ids),
        )
        .group_by(Escalation.origin_unit_id)
    )
    return await _per_unit(session, query)


async def acknowledgements(
    session: AsyncSession, start: datetime, end: datetime, unit_ids: Collection[int] | None
) -> list[tuple[int, datetime, datetime]]:
    """(origin unit, opened, acknowledged) of the escalations acknowledged in [start, end)."""
    query = select(
        Escalation.origin_unit_id, Escalation.opened_at, Escalation.acknowledged_at
    ).where(
        Escalation.acknowledged_at >= start,
        Escalation.acknowledged_at < end,
        *_in_units(Escalation.origin_unit_id, unit_ids),
    )
    return [(row[0], row[1], row[2]) for row in await session.execute(query) if row[2] is not None]


async def unreached_heads(
    session: AsyncSession, start: datetime, end: datetime, unit_ids: Collection[int] | None
) -> dict[int, int]:
    """Per unit complained about: escalation steps that found no head to reach
    (`skipped` or `unrouted` events in [start, end))."""
    query = (
        select(Escalation.origin_unit_id, func.count())
        .select_from(EscalationEvent)
        .join(Escalation, Escalation.id == EscalationEvent.escalation_id)
        .where(
            EscalationEvent.at >= start,
            EscalationEvent.at < end,
            EscalationEvent.kind.in_(UNREACHED_EVENTS),
            *_in_units(Escalation.origin_unit_id, unit_ids),
        )
        .group_by(Escalation.origin_unit_id)
    )
    return {unit_id: int(count) for unit_id, count in await session.execute(query)}


async def case_counts(
    session: AsyncSession, start: datetime, end: datetime, unit_ids: Collection[int] | None
) -> dict[int, tuple[int, ...]]:
    """Per unit: (cases overdue, apologies sent).

    Overdue: resolved in [start, end) after the latest promised date, or still open now
    (received or delayed) with that date before `end`. The second part reads the case's
    current status, so an old week's count drops as its late cases get resolved.
    """
    promised = func.coalesce(Case.delay_new_due_at, Case.due_at)
    # Two queries on two indexes (resolved_at; status, due_at), not one OR over every case.
    resolved_late = (
        select(Case.unit_id, func.count())
        .where(
            Case.resolved_at >= start,
            Case.resolved_at < end,
            Case.resolved_at > promised,
            *_in_units(Case.unit_id, unit_ids),
        )
        .group_by(Case.unit_id)
    )
    still_open = (
        select(Case.unit_id, func.count())
        .where(
            Case.status.in_([CaseStatus.RECEIVED, CaseStatus.DELAYED]),
            promised < end,
            *_in_units(Case.unit_id, unit_ids),
        )
        .group_by(Case.unit_id)
    )
    apologies = (
        select(Apology.unit_id, func.count())
        .where(
            Apology.created_at >= start,
            Apology.created_at < end,
            *_in_units(Apology.unit_id, unit_ids),
        )
        .group_by(Apology.unit_id)
    )
    counts: dict[int, tuple[int, ...]] = {}
    for query in (resolved_late, still_open):
        for unit_id, count in await session.execute(query):
            counts[unit_id] = (counts.get(unit_id, (0, 0))[0] + int(count), 0)
    for unit_id, count in await session.execute(apologies):
        counts[unit_id] = (counts.get(unit_id, (0, 0))[0], int(count))
    return counts


async def officer_names(session: AsyncSession, officer_ids: Collection[int]) -> dict[int, str]:
    from storage.models import Officer

    if not officer_ids:
        return {}
    rows = await session.execute(
        select(Officer.id, Officer.code, Officer.name).where(Officer.id.in_(list(officer_ids)))
    )
    return {row[0]: row[2] or row[1] for row in rows}


# --- who gets a digest, and what was sent --------------------------------------------------


async def heads(session: AsyncSession) -> Sequence[UnitHead]:
    return (await session.scalars(select(UnitHead).order_by(UnitHead.unit_id))).all()


async def recipients(session: AsyncSession) -> Sequence[DigestRecipient]:
    query = select(DigestRecipient).order_by(DigestRecipient.id)
    return (await session.scalars(query)).all()


async def delivered_keys(session: AsyncSession, week: str) -> set[str]:
    query = select(DigestDelivery.recipient).where(DigestDelivery.week == week)
    return set((await session.scalars(query)).all())


async def record_delivery(
    session: AsyncSession,
    *,
    recipient: str,
    week: str,
    scope_unit_id: int,
    channel: str | None,
    address: str | None,
    late: bool,
    now: datetime,
) -> bool:
    """Claims the (recipient, week) pair; False when another run or process has it already.

    `INSERT ... ON CONFLICT DO NOTHING RETURNING` on the unique key: of two transactions
    delivering the same digest at once, exactly one gets the row (PostgreSQL makes the second
    wait for the first to commit; SQLite serialises writers).
    """
    statement = (
        insert_for(session, DigestDelivery)
        .values(
            recipient=recipient,
            week=week,
            scope_unit_id=scope_unit_id,
            channel=channel,
            address=address,
            late=late,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=[DigestDelivery.recipient, DigestDelivery.week])
        .returning(DigestDelivery.id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def officer_responses(
    session: AsyncSession, start: datetime, end: datetime, unit_id: int
) -> dict[int, int]:
    """Per officer of one unit: responses about the cases they handled in [start, end)."""
    query = (
        select(Case.officer_id, func.count())
        .select_from(Survey)
        .join(Case, Case.id == Survey.case_id)
        .where(_completed_in(start, end), Case.unit_id == unit_id, Case.officer_id.is_not(None))
        .group_by(Case.officer_id)
    )
    return {
        officer_id: int(count)
        for officer_id, count in await session.execute(query)
        if officer_id is not None
    }
