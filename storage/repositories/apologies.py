"""The apologies table: each apology letter a case earned, recorded once, counted in digests."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.inserts import insert_for
from storage.models import Apology


async def record(
    session: AsyncSession,
    *,
    case_id: int,
    unit_id: int,
    kind: str,
    old_due_at: datetime,
    new_due_at: datetime,
    reason: str | None,
    now: datetime,
) -> Apology | None:
    """Records an apology; None when this case already has one of `kind` for `new_due_at`.

    `INSERT ... ON CONFLICT (case_id, kind, new_due_at) DO NOTHING RETURNING`, as in the
    outbox: two transactions recording the same apology at once store one row and neither
    fails, without a SAVEPOINT (which pysqlite would turn into a premature COMMIT).
    """
    values: dict[str, Any] = {
        "case_id": case_id,
        "unit_id": unit_id,
        "kind": kind,
        "old_due_at": old_due_at,
        "new_due_at": new_due_at,
        "reason": reason,
        "created_at": now,
    }
    statement = (
        insert_for(session, Apology)
        .values(values)
        .on_conflict_do_nothing(index_elements=[Apology.case_id, Apology.kind, Apology.new_due_at])
    )
    result = await session.scalars(statement.returning(Apology))
    return result.one_or_none()


async def of_case(session: AsyncSession, case_id: int, *, kind: str | None = None) -> list[Apology]:
    """The case's apologies, oldest first."""
    query = select(Apology).where(Apology.case_id == case_id).order_by(Apology.id)
    if kind is not None:
        query = query.where(Apology.kind == kind)
    return list((await session.scalars(query)).all())


async def has_kind(session: AsyncSession, case_id: int, kind: str) -> bool:
    query = select(Apology.id).where(Apology.case_id == case_id, Apology.kind == kind).limit(1)
    return (await session.scalar(query)) is not None


async def counts(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    *,
    unit_ids: Collection[int] | None = None,
) -> dict[str, int]:
    """Apologies recorded in [since, until), by kind, for a digest (optionally some units)."""
    query = (
        select(Apology.kind, func.count())
        .where(Apology.created_at >= since, Apology.created_at < until)
        .group_by(Apology.kind)
    )
    if unit_ids is not None:
        query = query.where(Apology.unit_id.in_(list(unit_ids)))
    return {kind: count for kind, count in (await session.execute(query)).all()}
