"""The few row-by-row reads of the dashboard's unit page: a week's comments (newest first,
capped) and the complaints of a scope with their audit trail. Everything counted comes from
storage/repositories/reports.py, as in the digest.

Comments are read without the citizen: no join to `citizens`, so no name can reach a page.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Answer, Case, Escalation, EscalationEvent, Survey


@dataclass(frozen=True)
class CommentRow:
    unit_id: int
    completed_at: datetime
    text: str


@dataclass(frozen=True)
class EscalationRow:
    id: int
    ref: str
    case_code: str
    reason: str
    severity: str
    status: str
    level: int
    holder_unit_id: int
    origin_unit_id: int
    opened_at: datetime


@dataclass(frozen=True)
class EventRow:
    escalation_id: int
    kind: str
    level: int
    unit_id: int | None
    at: datetime


async def recent_comments(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    question_ids: Collection[str],
    unit_ids: Collection[int],
    limit: int,
) -> list[CommentRow]:
    """The newest `limit` comments of surveys completed in [start, end) about the units.

    Walked newest first along ix_surveys_completed_case (completed_at, case_id), which the
    order follows exactly, so the database stops after `limit` matches instead of joining
    the whole week (a week of a large province: 125,000 responses, 350 ms). How many there
    are in all is the digest's count (`Counts.comments`), not counted again here.
    """
    if not question_ids or not unit_ids:
        return []
    query = (
        select(Case.unit_id, Survey.completed_at, Answer.value_text)
        .select_from(Survey)
        .join(Case, Case.id == Survey.case_id)
        .join(Answer, Answer.survey_id == Survey.id)
        .where(
            Survey.completed_at >= start,
            Survey.completed_at < end,
            Answer.question_id.in_(list(question_ids)),
            Answer.value_text.is_not(None),
            Answer.value_text != "",
            # `+ 0` keeps both planners off ix_cases_unit_id: starting from every case the
            # units ever had (then sorting) is what the walk below avoids.
            (Case.unit_id + 0).in_(list(unit_ids)),
        )
        .order_by(Survey.completed_at.desc(), Survey.case_id.desc())
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Parallel workers each run ahead along the index before the limit stops them: 20 ms
        # and three times the rows read, against 9 ms for the one walk (1M responses).
        await session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    rows = await session.execute(query)
    return [CommentRow(row[0], row[1], row[2]) for row in rows if row[1] is not None and row[2]]


async def scope_escalations(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    unit_ids: Collection[int],
    limit: int,
) -> tuple[list[EscalationRow], int]:
    """Complaints about the units (by origin, as the digest counts them) opened in
    [start, end) or still open at `end`: newest first, at most `limit`, and how many in all."""
    if not unit_ids:
        return [], 0
    opened = and_(Escalation.opened_at >= start, Escalation.opened_at < end)
    open_at_end = and_(
        Escalation.opened_at < end,
        or_(Escalation.resolved_at.is_(None), Escalation.resolved_at >= end),
    )
    where = (or_(opened, open_at_end), Escalation.origin_unit_id.in_(list(unit_ids)))
    total = await session.scalar(select(func.count()).select_from(Escalation).where(*where))
    query = (
        select(
            Escalation.id,
            Escalation.ref,
            Case.case_code,
            Escalation.reason,
            Escalation.severity,
            Escalation.status,
            Escalation.level,
            Escalation.unit_id,
            Escalation.origin_unit_id,
            Escalation.opened_at,
        )
        .join(Case, Case.id == Escalation.case_id)
        .where(*where)
        .order_by(Escalation.opened_at.desc(), Escalation.id.desc())
        .limit(limit)
    )
    rows = [EscalationRow(*tuple(row)) for row in await session.execute(query)]
    return rows, int(total or 0)


async def trails(session: AsyncSession, escalation_ids: Sequence[int]) -> list[EventRow]:
    """The audit trail of the escalations, each in order, up to now: an official reading
    an old week still wants to know how its complaints ended."""
    if not escalation_ids:
        return []
    query = (
        select(
            EscalationEvent.escalation_id,
            EscalationEvent.kind,
            EscalationEvent.level,
            EscalationEvent.unit_id,
            EscalationEvent.at,
        )
        .where(EscalationEvent.escalation_id.in_(list(escalation_ids)))
        .order_by(EscalationEvent.escalation_id, EscalationEvent.at, EscalationEvent.id)
    )
    return [EventRow(*row) for row in await session.execute(query)]
