"""Closed weeks' counts, stored once and read by every report (`handlers.digest.ClosedWeeks`).

How a stored week stays exact is explained in `handlers/digest.py`, "Stored weeks". This is the
part that owns transactions: it reads the stored rows, claims and counts the missing parts,
each on a connection of its own, and stores them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Collection, Sequence
from zoneinfo import ZoneInfo

from bot.app import Services
from bot.heap import exempt_from_collection
from handlers.clock import Clock
from handlers.digest import (
    CASE_PART,
    CLOSED_AFTER,
    SURVEY_PART,
    Counts,
    Week,
    counts_basis,
    counts_from_json,
    counts_to_json,
    joined_parts,
    part_counts,
)
from storage.db import SessionFactory
from storage.repositories import reports as reports_repo
from storage.repositories import snapshots as repo

log = logging.getLogger(__name__)

# Parts counted at once when several are missing (a cold history of eight weeks): two
# connections, as the API's report uses, on a machine of two cores.
PARALLEL = 2
# How long a count waits for PostgreSQL's writes in flight when it claimed a part; past it the
# part is counted but not stored (the next reader tries again).
WRITERS_PATIENCE = 2.0

# Stored parts as this process decoded them, by (week, zone, part, token): a token names one
# count of a part (a recount gets a new one), so what is held here is exactly what is stored
# under it, and a part deleted or counted again is simply not asked for by its old token.
# Decoding a week's responses for 700 units (~500 kB of JSON) costs 20-40 ms and a warm page
# reads two to eight weeks. Shared between readers: the counts are read, never changed.
_decoded: OrderedDict[tuple[str, str, str, str], dict[int, Counts]] = OrderedDict()
HELD_PARTS = 32

_Key = tuple[Week, str]  # (week, part)


def _hold(key: tuple[str, str, str, str], counts: dict[int, Counts]) -> dict[int, Counts]:
    new = key not in _decoded
    _decoded[key] = counts
    _decoded.move_to_end(key)
    while len(_decoded) > HELD_PARTS:
        _decoded.popitem(last=False)
    if new:
        # A few hundred thousand objects for eight weeks of 700 units (bot/heap.py): the
        # collection this costs runs when a part is decoded, not on the warm path.
        exempt_from_collection()
    return counts


class StoredWeeks:
    """`ClosedWeeks` over `report_snapshots`, with the service's clock deciding what is closed."""

    def __init__(self, sessions: SessionFactory, clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock
        self._parallel = asyncio.Semaphore(PARALLEL)

    def is_closed(self, week: Week, tz: ZoneInfo) -> bool:
        return week.end(tz) + CLOSED_AFTER <= self.clock.now()

    async def counts(
        self, weeks: Sequence[Week], tz: ZoneInfo, *, full: Collection[Week] = ()
    ) -> dict[Week, dict[int, Counts]]:
        closed = [week for week in weeks if self.is_closed(week, tz)]
        wanted = [(week, SURVEY_PART) for week in closed]
        wanted += [(week, CASE_PART) for week in closed if week in full]
        parts = await self._parts(wanted, tz)
        return {
            week: joined_parts(parts[(week, SURVEY_PART)], parts[(week, CASE_PART)])
            if week in full
            else parts[(week, SURVEY_PART)]
            for week in closed
        }

    async def warm(
        self, weeks: Sequence[Week], tz: ZoneInfo, *, full: Collection[Week] = ()
    ) -> None:
        """Stores the parts of the closed `weeks` not stored yet (whole for those in `full`)."""
        await self.counts(weeks, tz, full=full)

    async def _parts(self, wanted: list[_Key], tz: ZoneInfo) -> dict[_Key, dict[int, Counts]]:
        if not wanted:
            return {}
        basis = counts_basis()
        found: dict[_Key, dict[int, Counts]] = {}
        async with self.sessions() as session:
            await reports_repo.begin_reading(session)
            labels = sorted({week.label for week, _part in wanted})
            rows = await repo.stored_weeks(session, labels, tz.key)
            unread: dict[str, tuple[_Key, tuple[str, str, str, str]]] = {}
            for week, part in wanted:
                row = rows.get((week.label, part))
                if row is None or not row.ready or row.basis != basis:
                    continue
                held_key = (week.label, tz.key, part, row.token)
                held = _decoded.get(held_key)
                if held is None:
                    unread[row.token] = ((week, part), held_key)
                else:
                    found[(week, part)] = _hold(held_key, held)
            if unread:
                documents = await repo.stored_counts(session, list(unread))
                for token, document in documents.items():
                    key, held_key = unread[token]
                    found[key] = _hold(held_key, counts_from_json(document, key[1]))
        missing = [key for key in wanted if key not in found]
        if missing:
            counted = await asyncio.gather(*(self._count(*key, tz, basis) for key in missing))
            found.update(zip(missing, counted, strict=True))
        return found

    async def _count(self, week: Week, part: str, tz: ZoneInfo, basis: str) -> dict[int, Counts]:
        """Claims the part, counts it for every unit, and stores it if the claim survived."""
        async with self._parallel:
            token = secrets.token_hex(16)
            async with self.sessions.begin() as session:
                await repo.claim_week(
                    session,
                    week=week.label,
                    timezone=tz.key,
                    part=part,
                    week_start=week.start(tz),
                    week_end=week.end(tz),
                    basis=basis,
                    token=token,
                    now=self.clock.now(),
                )
            async with self.sessions() as session:
                settled = await repo.wait_for_writers(session, WRITERS_PATIENCE)
            # A read transaction begun after the claim was committed (and the writes then in
            # flight ended): every later write that could change the part deletes the claim.
            async with self.sessions() as session:
                await reports_repo.begin_reading(session)
                counts = await part_counts(session, week, tz, part)
            if not settled:
                log.warning(
                    "counted %s (%s) without storing it: writes in flight", week.label, part
                )
                return counts
            async with self.sessions.begin() as session:
                stored = await repo.fill_week(
                    session,
                    week=week.label,
                    timezone=tz.key,
                    part=part,
                    token=token,
                    counts=counts_to_json(counts, part),
                    now=self.clock.now(),
                )
            if not stored:
                log.info("%s (%s) not stored: changed or claimed meanwhile", week.label, part)
                return counts
            return _hold((week.label, tz.key, part, token), counts)


def stored_weeks(services: Services) -> StoredWeeks:
    """The service's stored weeks, for `build_report` and `scope_history` (`closed=`)."""
    return StoredWeeks(services.sessions, services.clock)
