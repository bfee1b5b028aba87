"""Closed weeks' counts, stored once and read by every report (`handlers.digest.ClosedWeeks`).

How a stored week stays exact is explained in `handlers/digest.py`, "Stored weeks". This is the
part that owns transactions: it reads the stored rows, claims and counts the missing weeks,
each on a connection of its own, and stores them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from bot.app import Services
from handlers.clock import Clock
from handlers.digest import (
    CLOSED_AFTER,
    Counts,
    Week,
    counts_basis,
    counts_from_json,
    counts_to_json,
    week_counts,
)
from storage.db import SessionFactory
from storage.repositories import reports as reports_repo
from storage.repositories import snapshots as repo

log = logging.getLogger(__name__)

# Weeks counted at once when several are missing (a cold history of eight): two connections,
# as the API's report uses, on a machine of two cores.
PARALLEL = 2
# How long a count waits for PostgreSQL's writes in flight when it claimed a week; past it the
# week is counted but not stored (the next reader tries again).
WRITERS_TIMEOUT = 2.0


# Stored weeks' counts as this process decoded them, by (week, zone, token): a token names
# one count of a week (a recount gets a new one), so what is held here is exactly what is
# stored under it, and a week deleted or counted again is simply not asked for by its old
# token. Decoding a week of 700 units (~650 kB of JSON) costs 20-40 ms; a warm page reads
# two to eight weeks. Shared between readers: the counts are read, never changed.
_decoded: OrderedDict[tuple[str, str, str], dict[int, Counts]] = OrderedDict()
HELD_WEEKS = 24


def _hold(week: Week, tz: ZoneInfo, token: str, counts: dict[int, Counts]) -> dict[int, Counts]:
    _decoded[(week.label, tz.key, token)] = counts
    while len(_decoded) > HELD_WEEKS:
        _decoded.popitem(last=False)
    return counts


class StoredWeeks:
    """`ClosedWeeks` over `report_snapshots`, with the service's clock deciding what is closed."""

    def __init__(self, sessions: SessionFactory, clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock
        self._parallel = asyncio.Semaphore(PARALLEL)

    def is_closed(self, week: Week, tz: ZoneInfo) -> bool:
        return week.end(tz) + CLOSED_AFTER <= self.clock.now()

    async def counts(self, weeks: Sequence[Week], tz: ZoneInfo) -> dict[Week, dict[int, Counts]]:
        closed = [week for week in weeks if self.is_closed(week, tz)]
        if not closed:
            return {}
        basis = counts_basis()
        found: dict[Week, dict[int, Counts]] = {}
        async with self.sessions() as session:
            await reports_repo.begin_reading(session)
            rows = await repo.stored_weeks(session, [week.label for week in closed], tz.key)
            unread: list[Week] = []
            for week in closed:
                row = rows.get(week.label)
                if row is None or not row.ready or row.basis != basis:
                    continue
                held = _decoded.get((week.label, tz.key, row.token))
                if held is None:
                    unread.append(week)
                else:
                    _decoded.move_to_end((week.label, tz.key, row.token))
                    found[week] = held
            if unread:
                documents = await repo.stored_counts(
                    session, [week.label for week in unread], tz.key
                )
                for week in unread:
                    if week.label in documents:
                        stored_basis, token, document = documents[week.label]
                        if stored_basis == basis:
                            found[week] = _hold(week, tz, token, counts_from_json(document))
        missing = [week for week in closed if week not in found]
        if missing:
            counted = await asyncio.gather(*(self._count(week, tz, basis) for week in missing))
            found.update(zip(missing, counted, strict=True))
        return found

    async def warm(self, weeks: Sequence[Week], tz: ZoneInfo) -> list[Week]:
        """Stores those of the closed `weeks` not stored yet; returns them."""
        closed = [week for week in weeks if self.is_closed(week, tz)]
        if not closed:
            return []
        basis = counts_basis()
        async with self.sessions() as session:
            await reports_repo.begin_reading(session)
            ready = await repo.ready_weeks(session, [week.label for week in closed], tz.key, basis)
        missing = [week for week in closed if week.label not in ready]
        await asyncio.gather(*(self._count(week, tz, basis) for week in missing))
        return missing

    async def _count(self, week: Week, tz: ZoneInfo, basis: str) -> dict[int, Counts]:
        """Claims the week, counts every unit, and stores the counts if the claim survived."""
        async with self._parallel:
            token = secrets.token_hex(16)
            async with self.sessions.begin() as session:
                await repo.claim_week(
                    session,
                    week=week.label,
                    timezone=tz.key,
                    week_end=week.end(tz),
                    basis=basis,
                    token=token,
                    now=self.clock.now(),
                )
            async with self.sessions() as session:
                settled = await repo.wait_for_writers(session, WRITERS_TIMEOUT)
            # A read transaction begun after the claim was committed (and the writes then in
            # flight ended): every later write that could change the week deletes the claim.
            async with self.sessions() as session:
                await reports_repo.begin_reading(session)
                counts = await week_counts(session, week, tz, None)
            if not settled:
                log.warning("counted %s without storing it: writes in flight", week.label)
                return counts
            async with self.sessions.begin() as session:
                stored = await repo.fill_week(
                    session,
                    week=week.label,
                    timezone=tz.key,
                    token=token,
                    counts=counts_to_json(counts),
                    now=self.clock.now(),
                )
            if not stored:
                log.info("counts of %s not stored: changed or claimed meanwhile", week.label)
                return counts
            return _hold(week, tz, token, counts)


def stored_weeks(services: Services) -> StoredWeeks:
    """The service's stored weeks, for `build_report` and `scope_history` (`closed=`)."""
    return StoredWeeks(services.sessions, services.clock)
