"""Incoming platform updates seen before: a redelivered update is processed once."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from storage.inserts import insert_for
from storage.models import ProcessedUpdate
from storage.types import utcnow


async def first_time(session: AsyncSession, channel: str, update_id: int) -> bool:
    """Records the update in the caller's transaction; False when it was processed already.

    The record commits with the update's effects, so a crash before the commit leaves the
    update unrecorded and its redelivery is processed; after the commit it is skipped.
    """
    values = {"channel": channel, "update_id": update_id, "received_at": utcnow()}
    statement = (
        insert_for(session, ProcessedUpdate)
        .values(values)
        .on_conflict_do_nothing()
        .returning(ProcessedUpdate.update_id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None
