"""Queries about escalations, their audit trail, and the unit hierarchy they climb."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, true
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
    Escalation,
    EscalationEvent,
    EscalationStatus,
    HeadInvite,
    Unit,
    UnitHead,
)


async def by_ref(session: AsyncSession, ref: str, *, for_update: bool = False) -> Escalation | None:
    query = select(Escalation).where(Escalation.ref == ref)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def for_case(session: AsyncSession, case_id: int, reason: str) -> Escalation | None:
    query = select(Escalation).where(Escalation.case_id == case_id, Escalation.reason == reason)
    return (await session.execute(query)).scalar_one_or_none()


async def awaiting_note(session: AsyncSession, actor: str) -> Escalation | None:
    """The escalation whose resolution note this head is about to type, if any."""
    query = (
        select(Escalation)
        .where(
            Escalation.awaiting_note_from == actor,
            Escalation.status != EscalationStatus.RESOLVED,
        )
        .order_by(Escalation.id.desc())
        .limit(1)
        .with_for_update()
    )
    return (await session.execute(query)).scalar_one_or_none()


async def clear_awaiting(session: AsyncSession, actor: str) -> None:
    query = select(Escalation).where(Escalation.awaiting_note_from == actor)
    for escalation in (await session.execute(query)).scalars():
        escalation.awaiting_note_from = None


async def claim(session: AsyncSession, escalation_id: int) -> Escalation | None:
    """Locks one escalation for the caller's transaction; None when another process holds it
    (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers instead)."""
    query = (
        select(Escalation).where(Escalation.id == escalation_id).with_for_update(skip_locked=True)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def due_ids(
    session: AsyncSession, now: datetime, limit: int, *, leave_out: Collection[int] = ()
) -> list[int]:
    """Ids of unresolved escalations whose deadline has come: open ones past `ack_due_at`,
    acknowledged ones past `resolve_due_at` (overdue ones hold their next reminder there),
    the longest due first. Nothing is locked: each is claimed in its own transaction."""
    skip = Escalation.id.not_in(sorted(leave_out)) if leave_out else true()
    due: list[tuple[datetime, int]] = []
    for status, column in (
        (EscalationStatus.OPEN, Escalation.ack_due_at),
        (EscalationStatus.ACKNOWLEDGED, Escalation.resolve_due_at),
    ):
        query = (
            select(column, Escalation.id)
            .where(Escalation.status == status, column <= now, skip)
            .order_by(column, Escalation.id)
            .limit(limit)
        )
        due.extend((at, id_) for at, id_ in (await session.execute(query)).all() if at)
    return [id_ for _, id_ in sorted(due)[:limit]]


async def unit(session: AsyncSession, unit_id: int) -> Unit:
    found = await session.get(Unit, unit_id)
    assert found is not None
    return found


async def head_of(session: AsyncSession, unit_id: int) -> UnitHead | None:
    query = select(UnitHead).where(UnitHead.unit_id == unit_id)
    return (await session.execute(query)).scalar_one_or_none()


async def chain(session: AsyncSession, unit_id: int) -> list[Unit]:
    """The unit and every unit above it, nearest first."""
    units: list[Unit] = []
    seen: set[int] = set()
    current: int | None = unit_id
    while current is not None and current not in seen:
        seen.add(current)
        found = await session.get(Unit, current)
        if found is None:
            break
        units.append(found)
        current = found.parent_id
    return units


async def heads_by_address(session: AsyncSession, channel: str, address: str) -> Sequence[UnitHead]:
    column = UnitHead.telegram_chat_id if channel == "telegram" else UnitHead.zalo_user_id
    return (await session.execute(select(UnitHead).where(column == address))).scalars().all()


def add_event(
    session: AsyncSession,
    escalation: Escalation,
    kind: str,
    now: datetime,
    *,
    actor: str | None = None,
    detail: dict[str, Any] | None = None,
    unit: Unit | None = None,
    level: int | None = None,
) -> None:
    """Records one step. The event concerns the unit holding the escalation unless `unit`
    (and its `level`) name another, e.g. a head passed over on the way up."""
    session.add(
        EscalationEvent(
            escalation_id=escalation.id,
            kind=kind,
            level=level if level is not None else escalation.level,
            unit_id=unit.id if unit is not None else escalation.unit_id,
            actor=actor,
            at=now,
            detail=detail or {},
        )
    )


async def events_of(session: AsyncSession, escalation_id: int) -> Sequence[EscalationEvent]:
    query = (
        select(EscalationEvent)
        .where(EscalationEvent.escalation_id == escalation_id)
        .order_by(EscalationEvent.id)
    )
    return (await session.execute(query)).scalars().all()


async def invite(
    session: AsyncSession, token: str, *, for_update: bool = False
) -> HeadInvite | None:
    query = select(HeadInvite).where(HeadInvite.token == token)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()
