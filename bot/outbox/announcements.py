"""Which held rows the sender may start next, committed before it calls the platform.

A sender records in the outbox (`announced_at`) the rows it is about to send, about half a
second's worth, before it sends any of them. A sender taking over after this one dies then
knows that every freed row it never announced was never sent: those go at once, and only the
few announced ones (perhaps sent just before the death) wait one chat spacing
(`Dispatcher._take_over`, `repository.void_claims`). What goes next among newly claimed rows is
announced in the claim's own transaction (`with_claim`); the rest in the background, about
eight sends at a time (`ahead`), while the rows announced before go out. (A write before every
send cost a tenth of the rate; one awaited in the loop, about 2 %.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from bot.outbox.errors import describe
from bot.outbox.held import HeldRow, HeldRows
from bot.outbox.pacing import PacingClock
from handlers.clock import Clock
from storage.db import SessionFactory
from storage.repositories import outbox as repository

# Its lines are the dispatcher's to an operator (one logger to filter or raise to DEBUG).
logger = logging.getLogger("bot.outbox.dispatcher")

Key = tuple[str, str]


class Announcements:
    """The announced rows of one sender, by (id, claim token), and the write under way."""

    def __init__(
        self,
        sessions: SessionFactory,
        clock: Clock,
        pacing: PacingClock,
        *,
        lookahead: int,
        retry_after: float,
        on_written: Callable[[], None],
        on_lost: Callable[[HeldRow], None],
        on_crash: Callable[[asyncio.Task[Any]], None],
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._pacing = pacing
        self._lookahead = lookahead  # rows: about half a second at the fastest channel's rate
        self._retry_after = retry_after
        self._on_written = on_written  # the loop goes on with what is announced now
        self._on_lost = on_lost  # a row someone else holds now: not ours to send
        self._on_crash = on_crash
        self._rows: set[tuple[int, str]] = set()
        # After a failed write, none is tried again before this moment (monotonic).
        self.retry_at = float("-inf")
        self._writing: asyncio.Task[None] | None = None

    def __contains__(self, row: HeldRow) -> bool:
        return (row.id, row.token) in self._rows

    @property
    def writing(self) -> asyncio.Task[None] | None:
        """The announcement being written, if any (a stop waits for it)."""
        return self._writing if self._writing is not None and not self._writing.done() else None

    def add(self, ids: Iterable[int], token: str) -> None:
        """Rows whose announcement just committed (with their claim)."""
        self._rows.update((id_, token) for id_ in ids)

    def forget(self, row: HeldRow) -> None:
        """The row was started: it is no longer waiting to go."""
        self._rows.discard((row.id, row.token))

    def with_claim(
        self, claims: list[HeldRow], held: HeldRows, busy: set[Key], *, everything: bool
    ) -> list[HeldRow]:
        """Of rows just claimed, those to announce in the claim's own transaction: every one
        that goes before all rows announced already (a reply ahead of a backlog), or the first
        half second's worth when none is. `everything` for a claim of only what goes before
        the rows held (a few replies or fresh invitations): all of them, rather than one more
        write for those behind the first."""
        self._rows &= {(row.id, row.token) for row in held.values()}
        front = min(
            ((row.priority, row.id) for row in held.values() if row in self),
            default=None,
        )
        line: list[HeldRow] = []
        seen: set[Key] = set()
        for row in sorted(claims, key=lambda r: (r.priority, r.id)):
            if row.key not in seen and row.key not in busy:
                seen.add(row.key)
                line.append(row)
        if everything:
            return line
        if front is None:
            return line[: self._lookahead]
        return [row for row in line if (row.priority, row.id) < front]

    def ahead(
        self,
        held: HeldRows,
        busy: set[Key],
        next_at: Mapping[Key, float],
        *,
        everything: bool = False,
    ) -> asyncio.Task[None] | None:
        """Starts writing the announcement of the rows next in line (all of them with
        `everything`) when fewer than half a lookahead of announced rows may go now, or at
        once when an unannounced row comes to the front (a reply). Returns the write under
        way, if any."""
        if self.writing is not None:
            return self._writing
        if self._pacing.monotonic() < self.retry_at:
            return None
        if len(self._rows) > len(held):  # rows gone since (released, lost)
            self._rows &= {(row.id, row.token) for row in held.values()}
        # The line's first rows (the first of each address with none in flight): those not
        # announced yet, and how many announced ones may go now. Only announced rows that
        # may go now fill the next turns: a reply waiting out its chat's spacing behind the
        # invitation just sent does not. Counted, a handful of citizens answering left
        # nothing of the backlog announced, and the sender idled until one of those replies
        # went (gaps of 0.2-0.3 s, 5-8 % of the rate).
        mono = self._pacing.monotonic()
        first: HeldRow | None = None
        fresh: list[HeldRow] = []
        ready = 0
        seen: set[Key] = set()
        for row in held.in_turn():
            if row.key in seen or row.key in busy:
                seen.add(row.key)
                continue
            seen.add(row.key)
            first = first or row
            if row not in self:
                fresh.append(row)
                if not everything and len(fresh) >= self._lookahead:
                    break
            elif next_at.get(row.key, 0.0) <= mono:
                ready += 1
        if not fresh:
            return None
        at_front = fresh[0] is first
        if not (everything or at_front or ready <= self._lookahead // 2):
            return None
        batch = fresh if everything else fresh[: max(1, self._lookahead - ready)]
        self._writing = asyncio.create_task(self._write(batch, held), name="outbox-announce")
        self._writing.add_done_callback(self._on_crash)
        return self._writing

    async def _write(self, batch: list[HeldRow], held: HeldRows) -> None:
        by_token: dict[str, list[int]] = {}
        for row in batch:
            by_token.setdefault(row.token, []).append(row.id)
        kept: set[tuple[int, str]] = set()
        try:
            async with self._sessions.begin() as session:
                now = self._clock.now()
                for token, ids in by_token.items():
                    ids_kept = await repository.announce(session, ids, token=token, now=now)
                    kept.update((id_, token) for id_ in ids_kept)
        except (SQLAlchemyError, OSError) as exc:
            logger.error("outbox: could not announce the next sends: %s", describe(exc))
            self.retry_at = self._pacing.monotonic() + self._retry_after
            return
        finally:
            self._on_written()
        self._rows |= kept
        for row in batch:
            if (row.id, row.token) not in kept and held.get(row.id) is row:
                self._on_lost(row)
