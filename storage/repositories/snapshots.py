"""Stored counts of closed weeks (`report_snapshots`): read, claim, fill.

The protocol (why it cannot keep a stale figure) is explained in `handlers/digest.py`, "Stored
weeks"; the triggers that delete a row on a write that could change it in
`storage/snapshot_triggers.py`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.inserts import insert_for
from storage.models import ReportSnapshot


@dataclass(frozen=True)
class StoredWeek:
    basis: str
    token: str  # a new one each time the week is counted: it names these counts
    ready: bool  # False: claimed, being counted


async def stored_weeks(
    session: AsyncSession, weeks: list[str], timezone: str
) -> dict[tuple[str, str], StoredWeek]:
    """What is stored of `weeks`, by (week, part), without the counts (a process may hold
    them decoded already)."""
    query = select(
        ReportSnapshot.week,
        ReportSnapshot.part,
        ReportSnapshot.basis,
        ReportSnapshot.token,
        ReportSnapshot.counts.is_not(None),
    ).where(ReportSnapshot.week.in_(weeks), ReportSnapshot.timezone == timezone)
    return {
        (row[0], row[1]): StoredWeek(row[2], row[3], bool(row[4]))
        for row in await session.execute(query)
    }


async def stored_counts(session: AsyncSession, tokens: list[str]) -> dict[str, dict[str, Any]]:
    """The stored counts named by `tokens` (those still stored), by token."""
    query = select(ReportSnapshot.token, ReportSnapshot.counts).where(
        ReportSnapshot.token.in_(tokens), ReportSnapshot.counts.is_not(None)
    )
    return {row[0]: row[1] for row in await session.execute(query)}


async def claim_week(
    session: AsyncSession,
    *,
    week: str,
    timezone: str,
    part: str,
    week_start: datetime,
    week_end: datetime,
    basis: str,
    token: str,
    now: datetime,
) -> None:
    """Writes (or takes over) the week's row as a claim: no counts yet, this `token`.

    Insert, or on the primary key update (`ON CONFLICT DO UPDATE`, both backends): two
    processes claiming at once both succeed, the later claim wins and only its holder can
    fill the row; PostgreSQL makes the second wait for the first to commit.
    """
    values = {
        "week_start": week_start,
        "week_end": week_end,
        "basis": basis,
        "token": token,
        "counts": None,
        "claimed_at": now,
        "computed_at": None,
    }
    statement = insert_for(session, ReportSnapshot).values(
        week=week, timezone=timezone, part=part, **values
    )
    statement = statement.on_conflict_do_update(
        index_elements=[ReportSnapshot.week, ReportSnapshot.timezone, ReportSnapshot.part],
        set_=values,
    )
    await session.execute(statement)


async def fill_week(
    session: AsyncSession,
    *,
    week: str,
    timezone: str,
    part: str,
    token: str,
    counts: dict[str, Any],
    now: datetime,
) -> bool:
    """Stores the counts in our claim; False when the claim is gone (a write that could change
    the week deleted it) or was taken over: then nothing is stored."""
    statement = (
        update(ReportSnapshot)
        .where(
            ReportSnapshot.week == week,
            ReportSnapshot.timezone == timezone,
            ReportSnapshot.part == part,
            ReportSnapshot.token == token,
            ReportSnapshot.counts.is_(None),
        )
        .values(counts=counts, computed_at=now)
        .execution_options(synchronize_session=False)
    )
    result: Any = await session.execute(statement)
    return int(result.rowcount) == 1


async def wait_for_writers(session: AsyncSession, patience: float) -> bool:
    """On PostgreSQL: waits until every transaction that was writing when this is called has
    ended (True), or `patience` seconds pass (False). SQLite needs no wait: it has one writer
    at a time, so a claim committed means no write is half done.

    Why: a write transaction whose trigger ran before our claim was committed did not see the
    claim, so it could not delete it; if it commits while we count, some of our queries would
    see it and some not. Counting only after it has ended makes every query see it.

    How: this transaction takes an id, X; every transaction in flight before has a smaller
    one; they have all ended when the oldest transaction still running is X itself (a
    snapshot's `xmin` reaches X). Not `xip` alone: a snapshot lists there only transactions
    below its `xmax`, and the newest ones in flight can be above it. The server's
    transactions are all counted, of every database (a transaction cannot be told to write
    elsewhere from here): a long one anywhere makes this give up, and the counts are then not
    stored, never wrong.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    ours = (await session.execute(text("SELECT pg_current_xact_id()::text"))).scalar_one()
    deadline = time.monotonic() + patience
    while True:
        done = (
            await session.execute(
                text(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())"
                    " >= CAST(CAST(:ours AS text) AS xid8)"
                ),
                {"ours": ours},
            )
        ).scalar_one()
        if done:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
