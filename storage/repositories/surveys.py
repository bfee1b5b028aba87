"""Queries about surveys and answers, including the sweeps' "what is due now" look-ups.

The sweep queries lock what they return (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so that
several processes sweeping at once each take different rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

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
    # SQLite ignores FOR UPDATE; it serialises writers with BEGIN IMMEDIATE instead.
    return query.with_for_update(skip_locked=True)


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


async def due_for_invitation(
    session: AsyncSession, now: datetime, channels: Sequence[str], limit: int
) -> Sequence[Survey]:
    """Scheduled surveys now due whose citizen can be reached on `channels`, or has opted out.

    Surveys of citizens who have no chat yet are left out here, not skipped in the caller:
    they may be most of the backlog, and skipping them after the LIMIT would starve the rest.
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
        select(Survey)
        .join(Case, Case.id == Survey.case_id)
        .join(Citizen, Citizen.id == Case.citizen_id)
        .where(
            Survey.status == SurveyStatus.SCHEDULED,
            Survey.due_at <= now,
            Citizen.erased_at.is_(None),
            or_(Citizen.opted_out_at.is_not(None), reachable),
        )
        .order_by(Survey.due_at, Survey.id)
        .limit(limit)
    )
    return (await session.execute(_claim(query))).scalars().all()


async def due_for_reminder(
    session: AsyncSession, invited_before: datetime, limit: int
) -> Sequence[Survey]:
    query = (
        select(Survey)
        .where(
            Survey.status == SurveyStatus.INVITED,
            Survey.reminded_at.is_(None),
            Survey.invited_at <= invited_before,
        )
        .order_by(Survey.invited_at, Survey.id)
        .limit(limit)
    )
    return (await session.execute(_claim(query))).scalars().all()


async def due_for_expiry(session: AsyncSession, now: datetime, limit: int) -> Sequence[Survey]:
    query = (
        select(Survey)
        .where(Survey.status.in_(_PENDING), Survey.expires_at <= now)
        .order_by(Survey.expires_at, Survey.id)
        .limit(limit)
    )
    return (await session.execute(_claim(query))).scalars().all()
