"""Queries about surveys and answers, including the sweeps' "what is due now" look-ups.

The sweep queries return ids; each item is then claimed in its own short transaction
(`claim`: `FOR UPDATE SKIP LOCKED` on PostgreSQL), so that several processes sweeping at once
split the work and one bad item holds back nothing but itself.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from storage.models import (
    Answer,
    Case,
    Citizen,
    CitizenContact,
    ContactStatus,
    Survey,
    SurveyStatus,
)

_PENDING = (SurveyStatus.SCHEDULED, SurveyStatus.INVITED, SurveyStatus.IN_PROGRESS)
_OPEN = (SurveyStatus.INVITED, SurveyStatus.IN_PROGRESS)


def _claim(query: Any) -> Any:
    # SQLite ignores FOR UPDATE; it serialises writers with BEGIN IMMEDIATE instead. Only the
    # survey's row is locked, whatever the query joins.
    return query.with_for_update(skip_locked=True, of=Survey)


async def by_ref(session: AsyncSession, ref: str, *, for_update: bool = False) -> Survey | None:
    query = select(Survey).where(Survey.ref == ref)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def open_for_address(session: AsyncSession, channel: str, address: str) -> Survey | None:
    """The survey this chat is answering now: in progress first, else the latest invitation."""
    query = (
        select(Survey)
        .where(Survey.channel == channel, Survey.address == address, Survey.status.in_(_OPEN))
        .order_by((Survey.status == SurveyStatus.IN_PROGRESS).desc(), Survey.invited_at.desc())
        .limit(1)
        .with_for_update()
    )
    return (await session.execute(query)).scalar_one_or_none()


async def pending_for_citizen(session: AsyncSession, case_ids: Sequence[int]) -> Sequence[Survey]:
    if not case_ids:
        return []
    query = select(Survey).where(Survey.case_id.in_(case_ids), Survey.status.in_(_PENDING))
    return (await session.execute(query)).scalars().all()


async def pending_for_address(
    session: AsyncSession, channel: str, address: str
) -> Sequence[Survey]:
    query = select(Survey).where(
        Survey.channel == channel, Survey.address == address, Survey.status.in_(_PENDING)
    )
    return (await session.execute(query)).scalars().all()


async def answer_for(session: AsyncSession, survey_id: int, question_id: str) -> Answer | None:
    query = select(Answer).where(Answer.survey_id == survey_id, Answer.question_id == question_id)
    return (await session.execute(query)).scalar_one_or_none()


async def claim(session: AsyncSession, survey_id: int) -> Survey | None:
    """Locks one survey for the caller's transaction; None when another process holds it.

    The per-item step of a sweep or of a wake: on PostgreSQL `FOR UPDATE SKIP LOCKED` lets
    several processes share the work, each item going to whoever takes it first. The caller
    checks again that the survey is still due: another process may have just handled it.
    """
    query = select(Survey).where(Survey.id == survey_id)
    return (await session.execute(_claim(query))).scalar_one_or_none()


async def claim_scheduled_for_case(
    session: AsyncSession, case_id: int
) -> tuple[Survey, Case] | None:
    """`claim` of the case's survey while it waits to be invited, with the case as an
    invitation shows it (`case_for_invitation`), in one query: the invitation woken after
    intake is on the path to the citizen's chat, and each statement counts there. Only the
    survey's row is locked (and skipped when another process holds it)."""
    query = _with_invitation_details(
        select(Survey, Case).join(Case, Case.id == Survey.case_id)
    ).where(Survey.case_id == case_id, Survey.status == SurveyStatus.SCHEDULED)
    row = (await session.execute(_claim(query))).unique().one_or_none()
    return (row[0], row[1]) if row is not None else None


async def case_for_invitation(session: AsyncSession, case_id: int) -> Case | None:
    """The case with everything an invitation shows (unit, procedure, officer, citizen) in one
    joined query."""
    query = _with_invitation_details(select(Case)).where(Case.id == case_id)
    return (await session.execute(query)).unique().scalar_one_or_none()


def _with_invitation_details(query: Any) -> Any:
    return query.options(
        joinedload(Case.unit),
        joinedload(Case.procedure),
        joinedload(Case.officer),
        joinedload(Case.citizen),
    )


def _not_in(ids: Collection[int]) -> Any:
    return Survey.id.not_in(sorted(ids)) if ids else true()


async def due_for_invitation(
    session: AsyncSession,
    now: datetime,
    channels: Sequence[str],
    limit: int,
    *,
    leave_out: Collection[int] = (),
) -> Sequence[int]:
    """Ids of scheduled surveys now due whose citizen can be reached on `channels`, or has
    opted out; `leave_out` are items a sweep is not to try yet (they failed recently).

    Surveys of citizens who have no chat yet are left out here, not skipped in the caller:
    they may be most of the backlog, and skipping them after the LIMIT would starve the rest.
    Nothing is locked: each item is claimed in its own transaction (`claim`).
    """
    reachable = (
        select(CitizenContact.id)
        .where(
            CitizenContact.citizen_id == Case.citizen_id,
            CitizenContact.status == ContactStatus.ACTIVE,
            CitizenContact.channel.in_(list(channels)),
        )
        .exists()
    )
    query = (
        select(Survey.id)
        .join(Case, Case.id == Survey.case_id)
        .join(Citizen, Citizen.id == Case.citizen_id)
        .where(
            Survey.status == SurveyStatus.SCHEDULED,
            Survey.due_at <= now,
            Citizen.erased_at.is_(None),
            or_(Citizen.opted_out_at.is_not(None), reachable),
            _not_in(leave_out),
        )
        .order_by(Survey.due_at, Survey.id)
        .limit(limit)
    )
    return (await session.execute(query)).scalars().all()


async def due_for_reminder(
    session: AsyncSession,
    invited_before: datetime,
    limit: int,
    *,
    leave_out: Collection[int] = (),
) -> Sequence[int]:
    query = (
        select(Survey.id)
        .where(
            Survey.status == SurveyStatus.INVITED,
            Survey.reminded_at.is_(None),
            Survey.invited_at <= invited_before,
            _not_in(leave_out),
        )
        .order_by(Survey.invited_at, Survey.id)
        .limit(limit)
    )
    return (await session.execute(query)).scalars().all()


async def due_for_expiry(
    session: AsyncSession, now: datetime, limit: int, *, leave_out: Collection[int] = ()
) -> Sequence[int]:
    query = (
        select(Survey.id)
        .where(Survey.status.in_(_PENDING), Survey.expires_at <= now, _not_in(leave_out))
        .order_by(Survey.expires_at, Survey.id)
        .limit(limit)
    )
    return (await session.execute(query)).scalars().all()
