"""The outbox dispatcher: sends every outgoing message from the outbox, within the platform
limits.

Handlers never call a platform; they write outbox rows in the transaction of the change that
caused them (docs/design.md, "transactional outbox"). The dispatcher claims due rows, paces them,
sends them through a channel's `Sender`, and settles each row in its own short transaction
(docs/design.md, "the dispatcher owns the platform limits"). Replies to a person who is answering
go first: rows are claimed and sent in (priority, id) order, and a `wake()` after a commit
makes the next claim immediate. Which process sends is decided in `bot/outbox/leadership.py`;
how fast, in `bot/outbox/pacing.py`; what a platform may answer, in `bot/outbox/errors.py`.

Delivery is at least once, and exactly once in every case but one: the platform accepted a
message and the process died (or the database failed) before the row was marked sent. The row
keeps its claim, and once the lease expires (60 s by default) it is claimed and sent again.
That window lasts one send plus one short UPDATE (or a send cut off by the shutdown grace).
Every claim carries a random token, and only its holder can settle the row: a send that
outlived its lease, whose row another claimant took over, cannot mark it sent or failed.
Everything settled as sent is never sent again, and everything unsent survives a restart.

The payload of an outbox row is the contract between the handlers and the senders:

    {"text": str,                                   # required
     "buttons": [[{"label": str, "data": str}, ...], ...],   # optional: rows of buttons
     "clear_buttons_of": int,   # optional: an outbox row id; its message loses its keyboard
     "edit": true,              # optional, with clear_buttons_of: edit that message instead
     "edit_message_id": str,    # optional: the platform id of a message in this chat whose
                                # text (and keyboard) this replaces; never sent anew
     "no_preview": true,        # optional: no link preview (a previewer must not open a
                                # one-time link); honoured where the platform has the option
     "sensitive": true}         # optional: the text holds a credential (a sign-in link); once
                                # the row is settled (sent or given up) its text is replaced
                                # by `REDACTED`, so the outbox does not keep it

The dispatcher turns `clear_buttons_of` into the platform id that row's message got (passed
to `Sender.send`), or None when that row was not sent (to the same address): the keyboard is
then skipped quietly, and an `edit` becomes a new message. A row that clears a keyboard and
then sends makes two platform calls and is paced as two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy.exc import SQLAlchemyError

from bot.outbox.announcements import Announcements
from bot.outbox.errors import (
    PermanentSendError,
    RetryAfter,
    Sender,
    TransientSendError,
    Unreachable,
    describe,
)
from bot.outbox.held import HeldRow, HeldRows, payload_cost
from bot.outbox.leadership import Leadership, leadership_for
from bot.outbox.pacing import PacingClock, SystemPacingClock, global_pace
from bot.outbox.wire import marking
from handlers.clock import Clock
from storage.db import SessionFactory
from storage.repositories import outbox as repository

logger = logging.getLogger(__name__)

SENT = Counter("sipas_outbox_sent_total", "Messages the platform accepted.", ["channel"])
FAILED = Counter("sipas_outbox_failed_total", "Messages given up for good.", ["channel", "reason"])
RETRIES = Counter(
    "sipas_outbox_retries_total", "Sends put back to be tried again.", ["channel", "reason"]
)
SEND_SECONDS = Histogram(
    "sipas_outbox_send_seconds",
    "Time the platform took to accept a message.",
    ["channel"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _log_crash(task: asyncio.Task[Any]) -> None:
    # _deliver and the announcements' writes handle every failure they expect; anything else
    # is a bug worth a traceback.
    if not task.cancelled() and task.exception() is not None:
        logger.error("outbox send task %s crashed", task.get_name(), exc_info=task.exception())


@dataclass
class _Start:
    """When a send started, as pacing counts it (monotonic) and as the outbox records it
    (`sent_at`, wall): first when the dispatcher started it, then when its request reached
    the wire, if the sender tells (bot/outbox/wire.py)."""

    at: float
    wall: datetime
    wired: bool = False


class Dispatcher:
    """Sends the outbox: claims due rows, paces them, settles each send.

    `global_rate` is per channel (one bot's limit); `per_chat_rate` spaces the starts of two
    sends to one address by `1 / per_chat_rate` seconds, and one send per address is in
    flight at a time. `run()` sends only while this process is the elected sender
    (`leadership`, by default chosen from the database: see the module docstring);
    `run_once()` and `drain()` send at once (tests and the demo, one process).
    """

    # Rows claimed even when the batch is full, so that the claim after a wake() finds the
    # reply that caused it: a reply never waits for room among held invitations.
    _URGENT_CLAIM = 20
    # How far ahead the next sends are announced (bot/outbox/announcements.py), in seconds at the
    # fastest channel's rate: half a second is 15 rows at 30 a second, announced about eight
    # at a time, so a sender taking over holds back at most that many rows for a spacing.
    _LOOKAHEAD_SECONDS = 0.5
    # The least time between two claims made while enough rows are held (see _should_claim).
    _URGENT_CLAIM_GAP = 0.05

    def __init__(
        self,
        sessions: SessionFactory,
        senders: Mapping[str, Sender],
        clock: Clock,
        *,
        global_rate: float = 30.0,
        per_chat_rate: float = 1.0,
        batch_size: int = 200,
        lease: timedelta = timedelta(seconds=60),
        max_attempts: int = 8,
        backoff_min: timedelta = timedelta(seconds=2),
        backoff_max: timedelta = timedelta(minutes=10),
        idle_interval: float = 1.0,
        flood_addresses: int = 3,
        flood_window: float = 1.0,
        shutdown_grace: float = 10.0,
        pacing_margin: float = 0.03,
        pacing: PacingClock | None = None,
        leadership: Leadership | None = None,
        rng: random.Random | None = None,
        channel_rates: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        if global_rate <= 0 or per_chat_rate <= 0:
            raise ValueError("rates must be positive")
        if batch_size < 1 or max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be at least 1")
        if pacing_margin < 0:
            raise ValueError("pacing_margin must not be negative")
        self._sessions = sessions
        self._senders = dict(senders)
        self._clock = clock
        self._pacing = pacing or SystemPacingClock()
        self._leadership = leadership or leadership_for(
            sessions, "+".join(sorted(self._senders)), self._pacing
        )
        self._global_rate = global_rate
        self._margin = pacing_margin
        self._spacing = (1.0 + pacing_margin) / per_chat_rate
        self._batch_size = batch_size
        # Claim more once half the batch is gone: the next claim overlaps the last sends.
        self._refill_below = max(1, batch_size // 2)
        self._lease = lease
        # Stop sending a held row this long before its lease ends: someone may take it then.
        self._lease_margin = lease / 10
        self._max_attempts = max_attempts
        self._backoff_min = backoff_min.total_seconds()
        self._backoff_max = backoff_max.total_seconds()
        self._idle_interval = idle_interval
        self._flood_addresses = flood_addresses
        self._flood_window = flood_window
        self._shutdown_grace = shutdown_grace
        self._rng = rng or random.Random()

        # A channel may have limits of its own: (bot-wide rate, per-chat rate).
        rates = {name: (global_rate, per_chat_rate) for name in self._senders}
        rates.update({n: r for n, r in (channel_rates or {}).items() if n in self._senders})
        if any(rate <= 0 for pair in rates.values() for rate in pair):
            raise ValueError("rates must be positive")
        self._paces = {
            name: global_pace(bot, pacing_margin) for name, (bot, _chat) in rates.items()
        }
        self._spacings = {
            name: (1.0 + pacing_margin) / chat for name, (_bot, chat) in rates.items()
        }
        # A new leader waits this long before its first send: the last window of the one
        # before it (dead or not) is then over, for the bot and for every chat.
        slowest_bot = min((bot for bot, _chat in rates.values()), default=global_rate)
        self._takeover_wait = max(
            self._spacing,
            *self._spacings.values(),
            (1.0 + pacing_margin) * max(1.0, 1 / slowest_bot),
        )
        self._lookahead = max(
            1, math.ceil(max(bot for bot, _chat in rates.values()) * self._LOOKAHEAD_SECONDS)
        )
        self._held = HeldRows()
        # Held rows whose announcement is committed: only these are sent.
        self._announcements = Announcements(
            sessions,
            clock,
            self._pacing,
            lookahead=self._lookahead,
            retry_after=idle_interval,
            on_written=lambda: self._signal.set(),
            on_lost=lambda row: self._claim_lost(row),
            on_crash=_log_crash,
        )
        # When a held row's lease may next be near its end (see _expiring).
        self._lease_check_at: datetime | None = None
        self._claiming: asyncio.Task[None] | None = None
        self._inflight: dict[int, asyncio.Task[bool]] = {}
        self._busy: set[tuple[str, str]] = set()
        self._next_at: dict[tuple[str, str], float] = {}
        self._paused_until: dict[str, float] = {}
        self._rate_limited: dict[str, deque[tuple[float, str]]] = {}
        # Addresses whose further rows a claim had to leave (one row per address per claim,
        # or our own claim blocked them): claim again as soon as we let go of the address.
        self._more_behind: set[tuple[str, str]] = set()
        self._claim_needed = True
        # A moment (monotonic) to claim at, whatever else: when rows put back come due.
        self._claim_at: float | None = None
        self._last_claim = float("-inf")
        self._more_due = False
        self._sent = 0
        self._signal = asyncio.Event()

    # ------------------------------------------------------------------ public API

    def wake(self) -> None:
        """Call after committing a transaction that enqueued messages: claim them now."""
        self._claim_needed = True
        self._signal.set()

    async def run_once(self) -> int:
        """Claims what is due, sends what the limits allow right now, and waits for those sends.

        Returns how many messages the platform accepted in this pass.
        """
        await self._claim()
        announcing = self._announcements.ahead(
            self._held, self._busy, self._next_at, everything=True
        )
        if announcing is not None:
            await announcing
        tasks = await self._dispatch()
        results = await asyncio.gather(*tasks)
        return sum(results)

    async def run(self, stop: asyncio.Event) -> None:
        """Sends while elected, until `stop` is set; then finishes the sends in flight and
        releases the rest (and the leadership)."""
        leadership = self._leadership

        async def relay(event: asyncio.Event) -> None:
            await event.wait()
            self._signal.set()

        watcher = asyncio.create_task(relay(stop))
        try:
            while not stop.is_set():
                if not await leadership.acquire(stop, self.wake):
                    break
                lost = asyncio.create_task(relay(leadership.lost))
                try:
                    await self._lead(stop, leadership)
                finally:
                    lost.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await lost
                    await self._shutdown()
                    await leadership.release()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _lead(self, stop: asyncio.Event, leadership: Leadership) -> None:
        lost = leadership.lost

        def finished() -> bool:
            return stop.is_set() or lost.is_set()

        if not finished():
            await self._take_over(leadership, finished)
        self._claim_needed = True
        while not finished():
            try:
                await self._pump(finished)
            except Exception:
                # Never let one bad moment end sending for the life of the process.
                logger.exception("outbox dispatcher loop failed; resuming shortly")
                self._signal.clear()
                await self._pacing.wait(self._signal, self._idle_interval)

    async def _take_over(self, leadership: Leadership, finished: Callable[[], bool]) -> None:
        """Starts where a sender before this one stopped (it died, lost its connection or
        stepped down).

        Its claims are freed at once (when this one is exclusive), not a lease later: a row it
        had sent but not yet marked goes out again, as it would after the lease (the
        at-least-once window of the module docstring). A sender calls the platform only for
        rows whose announcement it committed first (`Announcements.ahead`, the next half second's
        worth): the freed rows it never announced were never sent and go on at once; the
        announced ones wait one chat spacing in the outbox, as a tried row waits for its
        retry, since their chats may just have had them.

        Its last window counts against this one's limits. A row's `sent_at` is when its send
        started, so the sends it marked in the last window go into the pacing log at their
        time (the wall clock's age, moved onto the monotonic clock). What it started and never
        marked (a send cut off by its death, an attempt that failed) is unknown, but its own
        pacing allowed no more than the bot's count in that window: the rest of the count is
        taken as started now, which is no earlier than any of them. So when the old sender was
        draining at the limit, the new one goes on at the limit as the old starts age out,
        where a whole window's pause after every takeover cost about 5 % of a minute's drain;
        after a quiet sender it waits about one window, as before. If the database cannot
        say, it waits the whole window.
        """
        contended, exclusive = leadership.contended, leadership.exclusive
        if not contended and not exclusive:
            return
        wall, mono = self._clock.now(), self._pacing.monotonic()
        since = wall - timedelta(seconds=self._takeover_wait)
        try:
            async with self._sessions.begin() as session:
                earlier = (
                    await repository.recent_sends(session, self._senders, since)
                    if contended
                    else []
                )
                retry_at = wall + timedelta(seconds=self._takeover_wait)
                freed = (
                    await repository.void_claims(session, wall, self._senders, retry_at)
                    if exclusive
                    else None
                )
        except (SQLAlchemyError, OSError) as exc:
            logger.error(
                "outbox: could not read or free an earlier sender's work: %s", describe(exc)
            )
            if contended:
                await self._wait_until(mono + self._takeover_wait, finished)
            return
        if freed:
            logger.warning(
                "outbox: took over %d messages claimed by an earlier sender: %d free at once, "
                "%d announced (perhaps sent) waiting %.2f s",
                len(freed),
                freed.at_once,
                freed.waiting,
                self._takeover_wait,
            )
        if freed is not None and freed.waiting:
            # Claim them the moment they are due, not at the next idle look (a second later).
            self._claim_at = mono + self._takeover_wait + 0.005
            # Their chats may just have had them: nothing else goes to those chats for a
            # spacing either (a reply queued since, ahead of the row in its chat's order).
            for channel, address, payload in freed.announced:
                self._space_from(channel, address, mono, payload_cost(payload))
        if contended:
            self._count_earlier(earlier, wall, mono)

    def _count_earlier(
        self, earlier: list[repository.RecentSend], wall: datetime, mono: float
    ) -> None:
        """Puts an earlier sender's last window into this one's pacing (see _take_over)."""
        marked: dict[str, int] = dict.fromkeys(self._paces, 0)
        for send in earlier:
            if send.channel not in self._paces:
                continue
            cost = payload_cost(send.payload)
            started = mono - max((wall - send.at).total_seconds(), 0.0)
            self._paces[send.channel].add_earlier(started, cost)
            marked[send.channel] += cost
            self._space_from(send.channel, send.address, started, cost)
        for channel, pace in self._paces.items():
            unknown = max(0, pace.count - marked[channel])
            pace.add_earlier(mono, unknown)
            logger.info(
                "outbox: %s: the earlier sender's last %.2f s counted: %d sends marked, "
                "%d more taken as sent now",
                channel,
                self._takeover_wait,
                marked[channel],
                unknown,
            )

    def _space_from(self, channel: str, address: str, started: float, cost: int) -> None:
        key = (channel, address)
        spaced = started + self._spacings.get(channel, self._spacing) * cost
        self._next_at[key] = max(self._next_at.get(key, 0.0), spaced)

    async def _wait_until(self, deadline: float, finished: Callable[[], bool]) -> None:
        while not finished() and self._pacing.monotonic() < deadline:
            self._signal.clear()
            await self._pacing.wait(self._signal, deadline - self._pacing.monotonic())

    # The name is the brief's public API; asyncio.timeout() would not read better at call sites.
    async def drain(self, timeout: float) -> int:  # noqa: ASYNC109
        """Sends until nothing is due (for tests and the demo); returns how many were sent.

        Raises TimeoutError when there is still something to send after `timeout` seconds.
        """
        sent_before = self._sent

        async def until_nothing_due() -> None:
            while True:
                await self._pump(self._is_idle)
                # Idle now; a last claim tells whether something became claimable meanwhile.
                await self._claim()
                if not self._held and not self._inflight:
                    return

        try:
            await asyncio.wait_for(until_nothing_due(), timeout)
        except TimeoutError:
            raise TimeoutError(f"outbox not drained within {timeout}s") from None
        return self._sent - sent_before

    # ------------------------------------------------------------------ the loop

    def _is_idle(self) -> bool:
        claiming = self._claiming is not None and not self._claiming.done()
        return not self._held and not self._inflight and not self._claim_needed and not claiming

    async def _pump(self, finished: Callable[[], bool]) -> None:
        while not finished():
            self._signal.clear()
            if self._should_claim():
                if self._held:
                    # In the background: the held rows keep their turns while the claim's
                    # queries run. Under a backlog with people answering, a claim follows every
                    # press, and each one awaited here held back the next start by its round
                    # trip (with the window at the limit, time never made up): 5-10 % of the
                    # rate.
                    self._claiming = asyncio.create_task(self._claim_in_background(), name="claim")
                    self._claiming.add_done_callback(_log_crash)
                else:
                    # Nothing held to keep going: claim and send at once. (Measured with
                    # invitation_bench on PostgreSQL, 20 a second: a claim in a task here put
                    # the median invitation at 140 ms, this one at 45-51 ms.)
                    await self._claim_in_background()
            await self._dispatch()
            if finished():
                return
            await self._pacing.wait(self._signal, self._next_delay())

    async def _claim_in_background(self) -> None:
        try:
            await self._claim()
        except (SQLAlchemyError, OSError) as exc:
            # The database is away: keep what is held going, try again after a pause.
            logger.error("outbox claim failed: %s", describe(exc))
        finally:
            self._signal.set()  # what was claimed may go now

    def _should_claim(self) -> bool:
        if self._claiming is not None and not self._claiming.done():
            return False  # a wake() meanwhile keeps _claim_needed: claimed again after it
        if self._claim_needed:
            mono = self._pacing.monotonic()
            wait = self._last_claim + self._URGENT_CLAIM_GAP - mono
            if wait > 0 and len(self._held) + len(self._inflight) >= self._refill_below:
                # Hands full, and a claim just ran: the wakes of the next few moments share
                # one claim. Claimed after every resolution, back to back, claims held
                # SQLite's write lock most of the time, and the writes that send (the
                # announcements, the settling) queued behind them.
                self._claim_at = min(self._claim_at or math.inf, mono + wait)
                return False
            if self._claim_at is not None and self._claim_at <= mono:
                self._claim_at = None  # this claim is the one it was set for
            return True
        if self._claim_at is not None and self._pacing.monotonic() >= self._claim_at:
            self._claim_at = None
            return True
        if len(self._held) + len(self._inflight) >= self._refill_below:
            return False
        return self._more_due or self._pacing.monotonic() - self._last_claim >= self._idle_interval

    async def _claim(self) -> None:
        holding = len(self._held) + len(self._inflight)
        room = self._batch_size - holding
        limit = max(room, min(self._URGENT_CLAIM, self._batch_size))
        # With enough in hand (no refill due), a claim is for what goes before it: a wake()
        # after a press or a resolution. Asking only for that keeps the claim that follows
        # every resolution a short read, not a walk of the backlog's front each time.
        urgent_only = holding >= self._refill_below and bool(self._held)
        worst = max(claim.priority for claim in self._held.values()) if urgent_only else None
        self._claim_needed = False
        self._last_claim = self._pacing.monotonic()
        async with self._sessions.begin() as session:
            result = await repository.claim_due(
                session,
                self._clock.now(),
                limit,
                self._lease,
                channels=list(self._senders),
                holding=holding,
                # Never what we hold: not even a send in flight whose lease ran out meanwhile
                # (it settles under its own claim, or finds that someone else took it).
                exclude=[*self._held.ids(), *self._inflight],
                more_urgent_than=worst,
            )
            claims = [HeldRow.of(row) for row in result.messages]
            # What goes next among them is announced in the claim's own transaction: a reply
            # (or the first rows of a backlog) goes at once, not one more write later.
            first = self._announcements.with_claim(
                claims, self._held, self._busy, everything=urgent_only
            )
            announced = (
                await repository.announce(
                    session, [c.id for c in first], token=result.token, now=self._clock.now()
                )
                if first
                else set()
            )
        self._announcements.add(announced, result.token)
        logger.debug(
            "outbox: claimed %d (up to %d; only what goes first: %s), %d announced with the "
            "claim, %d held before",
            len(claims),
            limit,
            urgent_only,
            len(announced),
            holding,
        )
        if urgent_only:
            # A claim of only what goes first says nothing of the rest: it must not clear what
            # the last full claim said (an empty one did, and the next refill then waited for
            # the idle interval, found by tests/test_outbox.py with an interval of an hour).
            self._more_due = self._more_due or bool(claims)
        else:
            # Whatever came back, there may be more: the next refill finds out (cheaply),
            # unless this claim saw every claimable row (that next claim would find nothing:
            # it was one empty claim after every invitation).
            self._more_due = bool(claims) and not result.complete
        self._held.add(claims)
        if claims:
            earliest = min(claim.claimed_until for claim in claims) - self._lease_margin
            if self._lease_check_at is None or earliest < self._lease_check_at:
                self._lease_check_at = earliest
        ours = {claim.key for claim in self._held.values()} | self._busy
        self._more_behind.update(result.more_behind & ours)

    async def _dispatch(self) -> list[asyncio.Task[bool]]:
        """Starts a send for every held row the limits allow now, most urgent first."""
        now = self._clock.now()
        mono = self._pacing.monotonic()
        started: list[asyncio.Task[bool]] = []
        seen: set[tuple[str, str]] = set()
        # Channels whose next turn is not now (the bot's pace, or a flood pause): once every
        # channel held is, nothing further down the line may start, and the walk ends.
        blocked: set[str] = set()
        channels = self._held.channels
        expiring = self._expiring(now)
        for claim in self._held.in_turn():
            if len(blocked) == len(channels):
                break
            key = claim.key
            if key in seen:  # a later row of an address never overtakes an earlier one
                continue
            seen.add(key)
            if key in expiring or claim.channel in blocked:
                continue
            if mono < self._paused_until.get(claim.channel, 0.0):
                blocked.add(claim.channel)
                continue
            if (
                claim not in self._announcements
                or key in self._busy
                or mono < self._next_at.get(key, 0.0)
            ):
                continue
            pace = self._paces[claim.channel]
            if pace.ready_at(mono, claim.cost) > mono:
                # Strict priority order: nothing less urgent takes the next turn of the bot.
                blocked.add(claim.channel)
                continue
            pace.take(mono, claim.cost)
            self._held.remove(claim)
            self._announcements.forget(claim)
            self._busy.add(key)
            # Spacing counts between the starts of two sends, as the limit is stated. Counting
            # from the platform's answer would add a round trip to every gap, and a person
            # answering once a second would fall further behind with every answer.
            self._next_at[key] = (
                mono + self._spacings.get(claim.channel, self._spacing) * claim.cost
            )
            task = asyncio.create_task(self._deliver(claim, mono), name=f"outbox-{claim.id}")
            task.add_done_callback(_log_crash)
            self._inflight[claim.id] = task
            started.append(task)
        if expiring:
            await self._release_keys(expiring)
        self._forget_old_spacing(mono)
        self._announcements.ahead(self._held, self._busy, self._next_at)
        return started

    def _expiring(self, now: datetime) -> set[tuple[str, str]]:
        """The addresses of held rows whose lease ends within the margin: someone else may
        take them then, so they are not started but given back. Looked for only once the
        earliest lease held can be that close (not on every pass of the loop)."""
        if self._lease_check_at is None or now < self._lease_check_at:
            return set()
        held = self._held.values()
        found = {c.key for c in held if c.claimed_until - now <= self._lease_margin}
        later = [c.claimed_until for c in held if c.key not in found]
        self._lease_check_at = min(later) - self._lease_margin if later else None
        return found

    def _next_delay(self) -> float:
        """Seconds until a held row could go out (a completion or wake() comes sooner)."""
        mono = self._pacing.monotonic()
        delay = self._idle_interval
        if self._more_due and len(self._held) + len(self._inflight) < self._refill_below:
            delay = 0.0
        # Walked in turn: a channel is done at its first row that may go as soon as the
        # channel itself (its pace, a flood pause) allows, since none may go sooner.
        channels = self._held.channels
        done: set[str] = set()
        for claim in self._held.in_turn():
            if len(done) == len(channels):
                break
            if claim.channel in done or claim.key in self._busy:
                continue
            if claim not in self._announcements:
                # Its announcement's write wakes the loop; after a failed one, try again then.
                if self._announcements.retry_at > mono:
                    delay = min(delay, self._announcements.retry_at - mono)
                continue
            pace = self._paces[claim.channel]
            channel_at = max(self._paused_until.get(claim.channel, 0.0), pace.ready_at(mono))
            ready_at = max(
                self._next_at.get(claim.key, 0.0), channel_at, pace.ready_at(mono, claim.cost)
            )
            delay = min(delay, ready_at - mono)
            if ready_at <= channel_at:
                done.add(claim.channel)
        if self._claim_at is not None:
            delay = min(delay, self._claim_at - mono)
        return max(delay, 0.001)

    def _forget_old_spacing(self, mono: float) -> None:
        # Per-address pacing only matters for one spacing; do not keep every chat ever seen.
        if len(self._next_at) > 4 * self._batch_size:
            self._next_at = {key: at for key, at in self._next_at.items() if at > mono}

    async def _release_keys(self, keys: set[tuple[str, str]]) -> None:
        claims = [claim for claim in self._held.values() if claim.key in keys]
        for claim in claims:
            self._held.remove(claim)
        self._more_behind -= keys
        try:
            async with self._sessions.begin() as session:
                await self._release(session, claims)
        except (SQLAlchemyError, OSError) as exc:
            logger.error("outbox release failed (leases will expire): %s", describe(exc))

    @staticmethod
    async def _release(session: Any, claims: list[HeldRow]) -> None:
        by_token: dict[str, list[int]] = {}
        for claim in claims:
            by_token.setdefault(claim.token, []).append(claim.id)
        for token, ids in by_token.items():
            await repository.release_claims(session, ids, token=token)

    async def _shutdown(self) -> None:
        # A claim or an announcement under way ends first (what it claimed is released below);
        # a database that does not answer gets the grace of a send, not the life of the stop.
        claiming = self._claiming if self._claiming and not self._claiming.done() else None
        underway = [t for t in (claiming, self._announcements.writing) if t is not None]
        if underway:
            _, stuck = await asyncio.wait(underway, timeout=self._shutdown_grace)
            for late in stuck:
                late.cancel()
            if stuck:
                await asyncio.wait(stuck)
        if self._inflight:
            _, pending = await asyncio.wait(
                list(self._inflight.values()), timeout=self._shutdown_grace
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._held:
            await self._release_keys({claim.key for claim in self._held.values()})
        self._busy.clear()
        self._more_behind.clear()

    # ------------------------------------------------------------------ one send

    async def _deliver(self, claim: HeldRow, decided: float) -> bool:
        sender = self._senders[claim.channel]
        try:
            clear = await self._message_to_clear(claim)
            start = _Start(decided, self._clock.now())
            self._started(claim, start)

            def wired() -> None:
                # The first call of the send (a keyboard cleared first is the first of two).
                if not start.wired:
                    start.wired = True
                    self._started(claim, start)

            try:
                started = time.perf_counter()
                with marking(wired):
                    message_id = await sender.send(
                        claim.address, claim.payload, clear_buttons_of=clear
                    )
            except RetryAfter as exc:
                await self._rate_limited_by_platform(claim, exc)
                return False
            except Unreachable as exc:
                await self._unreachable(claim, exc)
                return False
            except PermanentSendError as exc:
                await self._give_up(claim, "rejected", exc)
                return False
            except TransientSendError as exc:
                await self._retry_later(claim, "transient", exc)
                return False
            except Exception as exc:
                # A bug in a sender must not lose the message nor stop the dispatcher.
                logger.exception("outbox %s to %s: unexpected send error", claim.id, claim.masked)
                await self._retry_later(claim, "unexpected", exc)
                return False
            SEND_SECONDS.labels(claim.channel).observe(time.perf_counter() - started)
            SENT.labels(claim.channel).inc()
            self._sent += 1
            # Its own short transaction, right away: the smaller the gap between the platform
            # accepting and this commit, the smaller the at-least-once window.
            async with self._sessions.begin() as session:
                settled = await repository.mark_sent(
                    session,
                    claim.id,
                    token=claim.token,
                    # A sender taking over counts the starts of the last second (_take_over).
                    now=start.wall,
                    platform_message_id=message_id,
                    redact=claim.sensitive,
                )
            if not settled:
                self._claim_lost(claim)
                return True
            # When its request went out, to the millisecond: a takeover or a busy second can
            # be read against the platform's own stamps (benchmarks/multiprocess_bench.py).
            logger.debug(
                "outbox %s sent to %s (on the wire at %s)",
                claim.id,
                claim.masked,
                f"{start.wall:%H:%M:%S.%f}"[:-3],
            )
            return True
        except (SQLAlchemyError, OSError) as exc:
            # The database failed before the send or while settling it (errors of the send
            # itself were handled above).
            logger.error(
                "outbox %s to %s: database error (%s); the row stays claimed and is "
                "retried when its lease expires",
                claim.id,
                claim.masked,
                describe(exc),
            )
            return False
        finally:
            self._busy.discard(claim.key)
            self._inflight.pop(claim.id, None)
            self._after(claim.key)
            self._signal.set()

    def _started(self, claim: HeldRow, start: _Start) -> None:
        """Pacing counts when a send starts: moves its count if it starts later than counted
        (the event loop was busy, or its request reached the wire only now)."""
        started = self._pacing.monotonic()
        if started - start.at > 0.001:
            self._paces[claim.channel].started_late(start.at, started, claim.cost)
            spaced = started + self._spacings.get(claim.channel, self._spacing) * claim.cost
            self._next_at[claim.key] = max(self._next_at.get(claim.key, 0.0), spaced)
            start.at, start.wall = started, self._clock.now()

    def _after(self, key: tuple[str, str]) -> None:
        """Asks for a claim when rows of this address may have been left behind."""
        if key not in self._more_behind or any(c.key == key for c in self._held.values()):
            return
        self._more_behind.discard(key)
        self._claim_needed = True

    def _drop_held(self, key: tuple[str, str]) -> list[HeldRow]:
        """Forgets the held rows of an address whose head goes back to wait: they must not
        overtake it, so they return to the queue behind it. Returns them, to release."""
        dropped = [claim for claim in self._held.values() if claim.key == key]
        for claim in dropped:
            self._held.remove(claim)
        return dropped

    def _claim_lost(self, claim: HeldRow) -> None:
        """The row was taken over (our lease ran out) or settled by someone else: whatever
        else this claim holds is no longer ours either, and must not be sent by us."""
        logger.warning(
            "outbox %s to %s: the claim was lost before it was settled (lease expired?)",
            claim.id,
            claim.masked,
        )
        for other in [c for c in self._held.values() if c.token == claim.token]:
            self._held.remove(other)

    async def _message_to_clear(self, claim: HeldRow) -> str | None:
        reference = claim.payload.get("clear_buttons_of")
        if reference is None:
            return None
        try:
            row_id = int(reference)
        except (TypeError, ValueError):
            logger.warning("outbox %s: clear_buttons_of is not a row id; ignored", claim.id)
            return None
        async with self._sessions() as session:
            return await repository.platform_message_id(
                session, row_id, channel=claim.channel, address=claim.address
            )

    async def _rate_limited_by_platform(self, claim: HeldRow, error: RetryAfter) -> None:
        """A 429 delays this address only, and is no fault of the message (no attempt used)."""
        RETRIES.labels(claim.channel, "rate_limited").inc()
        logger.info(
            "outbox %s to %s: rate limited for %.1fs", claim.id, claim.masked, error.seconds
        )
        # Several chats told to wait within a moment: the limit is the bot's, not the chat's.
        # Checked before the database write, so that the pause starts as early as it can.
        mono = self._pacing.monotonic()
        recent = self._rate_limited.setdefault(claim.channel, deque())
        recent.append((mono, claim.address))
        while recent and recent[0][0] < mono - self._flood_window:
            recent.popleft()
        if len({address for _, address in recent}) >= self._flood_addresses:
            until = mono + error.seconds
            if until > self._paused_until.get(claim.channel, 0.0):
                self._paused_until[claim.channel] = until
                RETRIES.labels(claim.channel, "flood").inc()
                logger.warning(
                    "channel %s flood-limited: pausing all sends for %.1fs",
                    claim.channel,
                    error.seconds,
                )
        async with self._sessions.begin() as session:
            settled = await repository.mark_retry(
                session,
                claim.id,
                token=claim.token,
                not_before=self._clock.now() + timedelta(seconds=error.seconds),
                error=describe(error),
                count_attempt=False,
            )
            await self._release(session, self._drop_held(claim.key))
        if not settled:
            self._claim_lost(claim)

    async def _unreachable(self, claim: HeldRow, error: Unreachable) -> None:
        now = self._clock.now()
        async with self._sessions.begin() as session:
            await repository.mark_failed(
                session, claim.id, token=claim.token, error=describe(error), redact=claim.sensitive
            )
            # True whoever holds the row now: the platform said the person is gone.
            cancelled = await repository.mark_address_unreachable(
                session, claim.channel, claim.address, now
            )
        FAILED.labels(claim.channel, "unreachable").inc()
        self._drop_held(claim.key)  # cancelled in the database already
        logger.info(
            "outbox %s: %s is unreachable (%s); %d other messages cancelled",
            claim.id,
            claim.masked,
            describe(error),
            cancelled,
        )

    async def _give_up(self, claim: HeldRow, reason: str, error: BaseException) -> None:
        async with self._sessions.begin() as session:
            settled = await repository.mark_failed(
                session, claim.id, token=claim.token, error=describe(error), redact=claim.sensitive
            )
        if not settled:
            self._claim_lost(claim)
            return
        FAILED.labels(claim.channel, reason).inc()
        logger.warning(
            "outbox %s to %s failed (%s): %s", claim.id, claim.masked, reason, describe(error)
        )

    async def _retry_later(self, claim: HeldRow, reason: str, error: BaseException) -> None:
        attempts = claim.attempts + 1
        if attempts >= self._max_attempts:
            await self._give_up(claim, "attempts", error)
            return
        delay = self._backoff(attempts)
        async with self._sessions.begin() as session:
            settled = await repository.mark_retry(
                session,
                claim.id,
                token=claim.token,
                not_before=self._clock.now() + delay,
                error=describe(error),
            )
            await self._release(session, self._drop_held(claim.key))
        if not settled:
            self._claim_lost(claim)
            return
        RETRIES.labels(claim.channel, reason).inc()
        logger.info(
            "outbox %s to %s: attempt %d failed (%s), retry in %.0fs",
            claim.id,
            claim.masked,
            attempts,
            describe(error),
            delay.total_seconds(),
        )

    def _backoff(self, attempts: int) -> timedelta:
        """Exponential with "equal jitter": attempt n waits between 2^n and 2^(n+1) seconds
        (scaled by backoff_min / 2), never more than backoff_max."""
        ceiling = min(self._backoff_max, self._backoff_min * 2.0 ** min(attempts, 32))
        seconds = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        return timedelta(seconds=min(self._backoff_max, max(self._backoff_min, seconds)))
