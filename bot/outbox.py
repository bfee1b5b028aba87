"""The outbox dispatcher: sends every outgoing message from the outbox, within the platform limits.

Handlers never call a platform; they write outbox rows in the transaction of the change that
caused them (docs/design.md, "transactional outbox"). The dispatcher claims due rows, paces them,
sends them through a channel's `Sender`, and settles each row in its own short transaction
(docs/design.md, "the dispatcher owns the platform limits"). Replies to a person who is answering
go first: rows are claimed and sent in (priority, id) order, and a `wake()` after a commit
makes the next claim immediate.

**One sender per bot, elected.** Telegram's limits (30 messages a second in all, one a second
per chat, and a pause for everyone after a flood of 429s) belong to the bot, not to a process.
With several `serve` processes on one PostgreSQL, exactly one of them sends: the one holding a
session-level advisory lock (`pg_try_advisory_lock`, keyed by schema and channels) on a
connection of its own. Its in-memory pacing then *is* the bot's pacing, exact to the
millisecond and costing no database round trip per message; the other processes only enqueue,
and wait to take over. The lock goes with the holder's connection: a process that dies
(`kill -9`, a lost network) loses it at once, and a standby, retrying four times a second,
takes over, frees the claims the dead one left (no waiting for their leases) and first waits
one pacing window, so the dead leader's last second cannot add to its first.
The leader checks its connection every second and stops sending when it is gone. A leader
LISTENs on `sipas_outbox`, and every enqueue NOTIFYs in its transaction (delivered on commit),
so a reply queued by whichever process took the update leaves within milliseconds, as the
in-process `wake()` does for the leader's own.
Why not limits kept in the database (a shared token bucket row)? Every send would take a row
lock and a round trip on the hottest row of the deployment, a stalled process holding tokens
would still need leases, and 30 a second is one process's easy work; the election costs one
idle connection. SQLite is one process by definition (the file's write lock is per host and
`serve` at scale is PostgreSQL, docs/design.md): there the dispatcher is its own leader.

Pacing counts the starts of calls to the platform: at most `global_rate` in any window of one
second (a sliding log, plus a minimum gap so a window's sends are spread, not bunched), and
`1 / per_chat_rate` seconds between two calls to one chat. Both are widened by
`pacing_margin` (3 %) so that the jitter between our start and the platform's arrival cannot
put one more message into the platform's one-second window. The dispatcher's monotonic clock
and waits are injected (`PacingClock`); everything about when a row is due (not_before,
backoff, leases) uses the injected wall `clock`.

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
     "edit_message_id": str}    # optional: the platform id of a message in this chat whose
                                # text (and keyboard) this replaces; never sent anew

The dispatcher turns `clear_buttons_of` into the platform id that row's message got (passed
to `Sender.send`), or None when that row was not sent (to the same address): the keyboard is
then skipped quietly, and an `edit` becomes a new message. A row that clears a keyboard and
then sends makes two platform calls and is paced as two.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.clock import Clock
from storage.db import SessionFactory
from storage.models import OutboxMessage
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
LEADER = Gauge("sipas_outbox_leader", "1 while this process is the elected sender.")


class SendError(Exception):
    """A platform refused or failed to take a message; the subclass says what to do next."""


class RetryAfter(SendError):
    """The platform's rate limit (HTTP 429): try this address again after `seconds`."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"rate limited, retry after {seconds:g}s")
        self.seconds = max(0.0, float(seconds))


class Unreachable(SendError):
    """The recipient blocked the bot or no longer exists: stop writing to them."""


class TransientSendError(SendError):
    """Network trouble, a timeout or a 5xx: the same message may go through later."""


class PermanentSendError(SendError):
    """The platform rejected this message itself (400): sending it again cannot help."""


class Sender(Protocol):
    """One channel's way to deliver a payload; it raises the `SendError` family, nothing else.

    `clear_buttons_of` is the platform id of an earlier message whose inline keyboard goes
    away before this one is sent (or, with `payload["edit"]`, the message whose text is
    replaced). Returns the platform's id of the message it produced.
    """

    channel: str

    async def send(
        self, address: str, payload: Mapping[str, Any], *, clear_buttons_of: str | None
    ) -> str | None: ...


_CHANNEL_TAGS = {"telegram": "tg", "zalo": "zl", "web": "web"}


def mask_address(channel: str, address: str) -> str:
    """`tg:…1234`: enough to tell chats apart in logs, not enough to find the person."""
    tag = _CHANNEL_TAGS.get(channel, channel[:3])
    tail = address[-4:] if len(address) > 6 else ""
    return f"{tag}:…{tail}"


def _describe(error: BaseException) -> str:
    """Class and platform description of an error, for `last_error` and logs (no payload)."""
    text = str(error)
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


def _log_crash(task: asyncio.Task[bool]) -> None:
    # _deliver handles every failure it expects; anything else is a bug worth a traceback.
    if not task.cancelled() and task.exception() is not None:
        logger.error("outbox send task %s crashed", task.get_name(), exc_info=task.exception())


class PacingClock(Protocol):
    """The dispatcher's monotonic time and its waits (tests move a fake one)."""

    def monotonic(self) -> float: ...

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Returns when `event` is set or after `seconds` on this clock, whichever is first."""
        ...


class SystemPacingClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(seconds, 0.0))


class _Pace:
    """At most `count` starts in any `window` seconds, and at least `gap` seconds apart.

    A sliding log rather than a token bucket: a bucket of rate r and burst b lets b + r
    starts into one second, which is how a bucket "at 30 a second" sent 33.
    """

    def __init__(self, count: int, window: float, gap: float) -> None:
        self._count = count
        self._window = window
        self._gap = gap
        self._starts: deque[float] = deque()

    def ready_at(self, now: float, cost: int = 1) -> float:
        """The earliest moment `cost` starts may be taken (now, when that is allowed)."""
        starts = self._starts
        while starts and starts[0] <= now - self._window:
            starts.popleft()
        at = now
        if starts:
            at = max(at, starts[-1] + self._gap)
        excess = len(starts) + min(cost, self._count) - self._count
        if excess > 0:
            at = max(at, starts[excess - 1] + self._window)
        return at

    def take(self, now: float, cost: int = 1) -> None:
        self._starts.extend([now] * cost)

    def started_late(self, decided: float, started: float, cost: int = 1) -> None:
        """The send decided at `decided` really started at `started` (the event loop was busy
        in between): count it then, or the next window could take a full share besides it."""
        if started <= decided:
            return
        starts = list(self._starts)
        for _ in range(cost):
            if decided in starts:
                starts.remove(decided)
                bisect.insort(starts, started)
        self._starts = deque(starts)


def global_pace(rate: float, margin: float) -> _Pace:
    """`rate` a second in any window, e.g. 30 in any 1.03 s at rate 30 and a 3 % margin."""
    count = max(1, math.floor(rate))
    window = count / rate * (1 + margin)
    return _Pace(count, window, gap=window / count / 2)


class Leadership(Protocol):
    """Who of the processes sharing a database sends for the bot (see the module docstring)."""

    lost: asyncio.Event
    # True when no one else can be sending while this one leads: a new leader then frees
    # the claims its predecessor left, instead of waiting for their leases to run out.
    exclusive: bool

    async def acquire(self, stop: asyncio.Event, on_notify: Callable[[], None]) -> bool:
        """Waits until this process is the sender (True) or `stop` is set (False).

        `lost` is cleared on success and set when the leadership goes; `on_notify` is called
        whenever another process committed messages to send.
        """
        ...

    @property
    def contended(self) -> bool:
        """Whether someone else held the leadership while this one waited for it."""
        ...

    async def release(self) -> None: ...


class SoleSender:
    """One process (SQLite, or a test): always the sender, at once.

    `exclusive=False` for a test that runs several dispatchers on one database on purpose.
    """

    contended = False

    def __init__(self, *, exclusive: bool = True) -> None:
        self.lost = asyncio.Event()
        self.exclusive = exclusive

    async def acquire(self, stop: asyncio.Event, on_notify: Callable[[], None]) -> bool:
        return not stop.is_set()

    async def release(self) -> None:
        return None


class AdvisoryLockLeadership:
    """PostgreSQL: the holder of a session-level advisory lock on its own connection sends.

    The key is the schema and `name` (the channels sent), hashed by the server, so two
    deployments in one database (or two test schemas) elect their senders independently.
    """

    exclusive = True

    def __init__(
        self,
        engine: AsyncEngine,
        name: str,
        pacing: PacingClock,
        *,
        retry_interval: float = 0.25,
        heartbeat_interval: float = 1.0,
    ) -> None:
        self._engine = engine
        self._name = f"sipas-outbox:{name}"
        self._pacing = pacing
        self._retry_interval = retry_interval
        self._heartbeat_interval = heartbeat_interval
        self.lost = asyncio.Event()
        self.contended = False
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        self._schema = ""
        self._heartbeat: asyncio.Task[None] | None = None
        self._on_notify: Callable[[], None] = lambda: None
        self._failures = 0

    async def acquire(self, stop: asyncio.Event, on_notify: Callable[[], None]) -> bool:
        self._on_notify = on_notify
        self.contended = False
        while not stop.is_set():
            try:
                if await self._try_lock():
                    self.lost.clear()
                    self._heartbeat = asyncio.create_task(
                        self._watch(), name="outbox-leader-heartbeat"
                    )
                    LEADER.set(1)
                    logger.info("outbox: this process is now the sender for %s", self._name)
                    return True
                self.contended = True
            except Exception as exc:  # SQLAlchemy, asyncpg and network errors alike
                await self._close()
                self._failures += 1
                if self._failures in (1, 10) or self._failures % 60 == 0:
                    logger.error("outbox: cannot try the sender lock: %s", _describe(exc))
            await self._pacing.wait(stop, self._retry_interval)
        await self._close()
        return False

    async def _try_lock(self) -> bool:
        if self._driver is None:
            self._connection = await self._engine.connect()
            raw = await self._connection.get_raw_connection()
            self._driver = raw.driver_connection
            self._schema = str(await self._driver.fetchval("SELECT current_schema()"))
        locked = bool(
            await self._driver.fetchval(
                "SELECT pg_try_advisory_lock(hashtextextended($1 || ':' || $2, 0))",
                self._schema,
                self._name,
            )
        )
        self._failures = 0
        if locked:
            await self._driver.add_listener(repository.NOTIFY_CHANNEL, self._notified)
            self._driver.add_termination_listener(self._terminated)
        return locked

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == self._schema:
            self._on_notify()

    def _terminated(self, _connection: Any) -> None:
        if not self.lost.is_set():
            logger.error("outbox: the sender's database connection closed; stepping down")
        self.lost.set()

    async def _watch(self) -> None:
        """Steps down when the lock's connection stops answering: another may hold it soon."""
        while not self.lost.is_set():
            await asyncio.sleep(self._heartbeat_interval)
            try:
                await asyncio.wait_for(
                    self._driver.fetchval("SELECT 1"), self._heartbeat_interval * 2
                )
            except Exception as exc:
                logger.error("outbox: sender connection lost (%s); stepping down", _describe(exc))
                self.lost.set()

    async def release(self) -> None:
        LEADER.set(0)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        self.lost.set()
        await self._close()

    async def _close(self) -> None:
        connection, self._connection, self._driver = self._connection, None, None
        if connection is None:
            return
        # Never back to the pool: a pooled connection would keep the lock and the LISTEN.
        with contextlib.suppress(Exception):
            await connection.invalidate()
        with contextlib.suppress(Exception):
            await connection.close()


def leadership_for(sessions: SessionFactory, name: str, pacing: PacingClock) -> Leadership:
    """An advisory-lock election on PostgreSQL; on SQLite (one process) the sole sender."""
    bind = sessions.kw.get("bind")
    if isinstance(bind, AsyncEngine) and bind.dialect.name == "postgresql":
        return AdvisoryLockLeadership(bind, name, pacing)
    return SoleSender()


@dataclass(frozen=True)
class _Claim:
    """What the dispatcher keeps of a claimed row (plain data, no ORM session attached)."""

    id: int
    channel: str
    address: str
    priority: int
    payload: Mapping[str, Any]
    attempts: int
    claimed_until: datetime
    token: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.address)

    @property
    def masked(self) -> str:
        return mask_address(self.channel, self.address)

    @property
    def cost(self) -> int:
        """Platform calls the send makes: clearing an old keyboard first is one more."""
        payload = self.payload
        clears = payload.get("clear_buttons_of") is not None and not payload.get("edit")
        return 2 if clears else 1

    @classmethod
    def of(cls, row: OutboxMessage) -> _Claim:
        assert row.claimed_until is not None  # claim_due sets it
        assert row.claim_token is not None
        return cls(
            id=row.id,
            channel=row.channel,
            address=row.address,
            priority=row.priority,
            payload=dict(row.payload),
            attempts=row.attempts,
            claimed_until=row.claimed_until,
            token=row.claim_token,
        )


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

        self._paces = {name: global_pace(global_rate, pacing_margin) for name in self._senders}
        # A new leader waits this long before its first send: the last window of the one
        # before it (dead or not) is then over, for the bot and for every chat.
        self._takeover_wait = max(self._spacing, (1.0 + pacing_margin) * max(1.0, 1 / global_rate))
        self._held: dict[int, _Claim] = {}
        self._inflight: dict[int, asyncio.Task[bool]] = {}
        self._busy: set[tuple[str, str]] = set()
        self._next_at: dict[tuple[str, str], float] = {}
        self._paused_until: dict[str, float] = {}
        self._rate_limited: dict[str, deque[tuple[float, str]]] = {}
        # Addresses whose further rows a claim had to leave (one row per address per claim,
        # or our own claim blocked them): claim again as soon as we let go of the address.
        self._more_behind: set[tuple[str, str]] = set()
        self._claim_needed = True
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

        if leadership.contended:
            # Another process sent until moments ago: let its last window pass first.
            deadline = self._pacing.monotonic() + self._takeover_wait
            while not finished() and self._pacing.monotonic() < deadline:
                self._signal.clear()
                await self._pacing.wait(self._signal, deadline - self._pacing.monotonic())
        if leadership.exclusive and not finished():
            await self._take_over_claims()
        self._claim_needed = True
        while not finished():
            try:
                await self._pump(finished)
            except Exception:
                # Never let one bad moment end sending for the life of the process.
                logger.exception("outbox dispatcher loop failed; resuming shortly")
                self._signal.clear()
                await self._pacing.wait(self._signal, self._idle_interval)

    async def _take_over_claims(self) -> None:
        """Frees what a sender before this one held (it died, or lost its connection): sent
        from now on, not a lease later. A row it had sent but not yet marked goes out again,
        as it would after the lease: the at-least-once window of the module docstring."""
        try:
            async with self._sessions.begin() as session:
                freed = await repository.void_claims(session, self._clock.now(), self._senders)
        except (SQLAlchemyError, OSError) as exc:
            logger.error("outbox: could not free earlier claims: %s", _describe(exc))
            return
        if freed:
            logger.warning("outbox: took over %d messages claimed by an earlier sender", freed)

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
        return not self._held and not self._inflight and not self._claim_needed

    async def _pump(self, finished: Callable[[], bool]) -> None:
        while not finished():
            self._signal.clear()
            if self._should_claim():
                try:
                    await self._claim()
                except (SQLAlchemyError, OSError) as exc:
                    # The database is away: keep what is held going, try again after a pause.
                    logger.error("outbox claim failed: %s", _describe(exc))
                    self._claim_needed = False
            await self._dispatch()
            if finished():
                return
            await self._pacing.wait(self._signal, self._next_delay())

    def _should_claim(self) -> bool:
        if self._claim_needed:
            return True
        if len(self._held) + len(self._inflight) >= self._refill_below:
            return False
        return self._more_due or self._pacing.monotonic() - self._last_claim >= self._idle_interval

    async def _claim(self) -> None:
        holding = len(self._held) + len(self._inflight)
        room = self._batch_size - holding
        limit = max(room, min(self._URGENT_CLAIM, self._batch_size))
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
                exclude=[*self._held, *self._inflight],
            )
            claims = [_Claim.of(row) for row in result.messages]
        # Whatever came back, there may be more: the next refill finds out (cheaply).
        self._more_due = bool(claims)
        for claim in claims:
            self._held[claim.id] = claim
        ours = {claim.key for claim in self._held.values()} | self._busy
        self._more_behind.update(result.more_behind & ours)

    async def _dispatch(self) -> list[asyncio.Task[bool]]:
        """Starts a send for every held row the limits allow now, most urgent first."""
        now = self._clock.now()
        mono = self._pacing.monotonic()
        started: list[asyncio.Task[bool]] = []
        seen: set[tuple[str, str]] = set()
        out_of_turn: set[str] = set()
        expiring: set[tuple[str, str]] = set()
        for claim in sorted(self._held.values(), key=lambda c: (c.priority, c.id)):
            key = claim.key
            if key in seen:  # a later row of an address never overtakes an earlier one
                continue
            seen.add(key)
            if claim.claimed_until - now <= self._lease_margin:
                expiring.add(key)
                continue
            if (
                claim.channel in out_of_turn
                or key in self._busy
                or mono < self._paused_until.get(claim.channel, 0.0)
                or mono < self._next_at.get(key, 0.0)
            ):
                continue
            pace = self._paces[claim.channel]
            if pace.ready_at(mono, claim.cost) > mono:
                # Strict priority order: nothing less urgent takes the next turn of the bot.
                out_of_turn.add(claim.channel)
                continue
            pace.take(mono, claim.cost)
            del self._held[claim.id]
            self._busy.add(key)
            # Spacing counts between the starts of two sends, as the limit is stated. Counting
            # from the platform's answer would add a round trip to every gap, and a person
            # answering once a second would fall further behind with every answer.
            self._next_at[key] = mono + self._spacing * claim.cost
            task = asyncio.create_task(self._deliver(claim, mono), name=f"outbox-{claim.id}")
            task.add_done_callback(_log_crash)
            self._inflight[claim.id] = task
            started.append(task)
        if expiring:
            await self._release_keys(expiring)
        self._forget_old_spacing(mono)
        return started

    def _next_delay(self) -> float:
        """Seconds until a held row could go out (a completion or wake() comes sooner)."""
        mono = self._pacing.monotonic()
        delay = self._idle_interval
        if self._more_due and len(self._held) + len(self._inflight) < self._refill_below:
            delay = 0.0
        for claim in self._held.values():
            if claim.key in self._busy:
                continue
            ready_at = max(
                self._next_at.get(claim.key, 0.0),
                self._paused_until.get(claim.channel, 0.0),
                self._paces[claim.channel].ready_at(mono, claim.cost),
            )
            delay = min(delay, ready_at - mono)
        return max(delay, 0.001)

    def _forget_old_spacing(self, mono: float) -> None:
        # Per-address pacing only matters for one spacing; do not keep every chat ever seen.
        if len(self._next_at) > 4 * self._batch_size:
            self._next_at = {key: at for key, at in self._next_at.items() if at > mono}

    async def _release_keys(self, keys: set[tuple[str, str]]) -> None:
        claims = [claim for claim in self._held.values() if claim.key in keys]
        for claim in claims:
            del self._held[claim.id]
        self._more_behind -= keys
        try:
            async with self._sessions.begin() as session:
                await self._release(session, claims)
        except (SQLAlchemyError, OSError) as exc:
            logger.error("outbox release failed (leases will expire): %s", _describe(exc))

    @staticmethod
    async def _release(session: Any, claims: list[_Claim]) -> None:
        by_token: dict[str, list[int]] = {}
        for claim in claims:
            by_token.setdefault(claim.token, []).append(claim.id)
        for token, ids in by_token.items():
            await repository.release_claims(session, ids, token=token)

    async def _shutdown(self) -> None:
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

    async def _deliver(self, claim: _Claim, decided: float) -> bool:
        sender = self._senders[claim.channel]
        try:
            clear = await self._message_to_clear(claim)
            self._started(claim, decided)
            try:
                started = time.perf_counter()
                message_id = await sender.send(claim.address, claim.payload, clear_buttons_of=clear)
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
                    now=self._clock.now(),
                    platform_message_id=message_id,
                )
            if not settled:
                self._claim_lost(claim)
                return True
            logger.debug("outbox %s sent to %s", claim.id, claim.masked)
            return True
        except (SQLAlchemyError, OSError) as exc:
            # The database failed before the send or while settling it (errors of the send
            # itself were handled above).
            logger.error(
                "outbox %s to %s: database error (%s); the row stays claimed and is "
                "retried when its lease expires",
                claim.id,
                claim.masked,
                _describe(exc),
            )
            return False
        finally:
            self._busy.discard(claim.key)
            self._inflight.pop(claim.id, None)
            self._after(claim.key)
            self._signal.set()

    def _started(self, claim: _Claim, decided: float) -> None:
        """Pacing counts when a send starts: moves its count if it starts later than paced."""
        started = self._pacing.monotonic()
        if started - decided > 0.001:
            self._paces[claim.channel].started_late(decided, started, claim.cost)
            spaced = started + self._spacing * claim.cost
            self._next_at[claim.key] = max(self._next_at.get(claim.key, 0.0), spaced)

    def _after(self, key: tuple[str, str]) -> None:
        """Asks for a claim when rows of this address may have been left behind."""
        if key not in self._more_behind or any(c.key == key for c in self._held.values()):
            return
        self._more_behind.discard(key)
        self._claim_needed = True

    def _drop_held(self, key: tuple[str, str]) -> list[_Claim]:
        """Forgets the held rows of an address whose head goes back to wait: they must not
        overtake it, so they return to the queue behind it. Returns them, to release."""
        dropped = [claim for claim in self._held.values() if claim.key == key]
        for claim in dropped:
            del self._held[claim.id]
        return dropped

    def _claim_lost(self, claim: _Claim) -> None:
        """The row was taken over (our lease ran out) or settled by someone else: whatever
        else this claim holds is no longer ours either, and must not be sent by us."""
        logger.warning(
            "outbox %s to %s: the claim was lost before it was settled (lease expired?)",
            claim.id,
            claim.masked,
        )
        for other in [c for c in self._held.values() if c.token == claim.token]:
            del self._held[other.id]

    async def _message_to_clear(self, claim: _Claim) -> str | None:
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

    async def _rate_limited_by_platform(self, claim: _Claim, error: RetryAfter) -> None:
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
                error=_describe(error),
                count_attempt=False,
            )
            await self._release(session, self._drop_held(claim.key))
        if not settled:
            self._claim_lost(claim)

    async def _unreachable(self, claim: _Claim, error: Unreachable) -> None:
        now = self._clock.now()
        async with self._sessions.begin() as session:
            await repository.mark_failed(
                session, claim.id, token=claim.token, error=_describe(error)
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
            _describe(error),
            cancelled,
        )

    async def _give_up(self, claim: _Claim, reason: str, error: BaseException) -> None:
        async with self._sessions.begin() as session:
            settled = await repository.mark_failed(
                session, claim.id, token=claim.token, error=_describe(error)
            )
        if not settled:
            self._claim_lost(claim)
            return
        FAILED.labels(claim.channel, reason).inc()
        logger.warning(
            "outbox %s to %s failed (%s): %s", claim.id, claim.masked, reason, _describe(error)
        )

    async def _retry_later(self, claim: _Claim, reason: str, error: BaseException) -> None:
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
                error=_describe(error),
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
            _describe(error),
            delay.total_seconds(),
        )

    def _backoff(self, attempts: int) -> timedelta:
        """Exponential with "equal jitter": attempt n waits between 2^n and 2^(n+1) seconds
        (scaled by backoff_min / 2), never more than backoff_max."""
        ceiling = min(self._backoff_max, self._backoff_min * 2.0 ** min(attempts, 32))
        seconds = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        return timedelta(seconds=min(self._backoff_max, max(self._backoff_min, seconds)))
