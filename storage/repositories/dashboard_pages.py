"""The few row-by-row reads of the dashboard's unit page: a week's comments (newest first,
capped) and the complaints of a scope with their audit trail. Everything counted comes from
storage/repositories/reports.py, as in the digest.

Comments are read without the citizen: no join to `citizens`, so no name can reach a page.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
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
) -> tuple[list[CommentRow], int]:
    """The newest `limit` comments of surveys completed in [start, end) about the units, and
    how many there are in all."""
    if not question_ids or not unit_ids:
        return [], 0
    where = (
        Survey.completed_at >= start,
        Survey.completed_at < end,
        Answer.question_id.in_(list(question_ids)),
        Answer.value_text.is_not(None),
        Case.unit_id.in_(list(unit_ids)),
    )
    joined = (
        select(Case.unit_id, Survey.completed_at, Answer.value_text)
        .select_from(Survey)
        .join(Case, Case.id == Survey.case_id)
        .join(Answer, Answer.survey_id == Survey.id)
        .where(*where)
    )
    total = await session.scalar(
        select(func.count())
        .select_from(Survey)
        .join(Case, Case.id == Survey.case_id)
        .join(Answer, Answer.survey_id == Survey.id)
        .where(*where)
    )
    rows = await session.execute(
        joined.order_by(Survey.completed_at.desc(), Answer.id.desc()).limit(limit)
    )
    found = [CommentRow(row[0], row[1], row[2]) for row in rows if row[1] is not None and row[2]]
    return found, int(total or 0)


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
