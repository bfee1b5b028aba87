"""Which process sends for the bot.

Telegram's limits (30 messages a second in all, one a second
per chat, and a pause for everyone after a flood of 429s) belong to the bot, not to a process.
With several `serve` processes on one PostgreSQL, exactly one of them sends: the one holding a
session-level advisory lock (`pg_try_advisory_lock`, keyed by schema and channels) on a
connection of its own. Its in-memory pacing then *is* the bot's pacing, exact to the
millisecond and costing no database round trip per message; the other processes only enqueue,
and wait to take over. The lock goes with the holder's connection: a process that dies
(`kill -9`, a lost network) loses it at once, and a standby, retrying ten times a second,
takes over, frees the claims the dead one left (no waiting for their leases; only the few
rows it had announced as about to send wait one chat spacing) and counts the dead leader's
last second (its sends marked in the outbox, and the rest of its limit as if sent just now)
against its own first, so the two cannot add up to more than the limits.
The leader checks its connection every second and stops sending when it is gone. A leader
LISTENs on `sipas_outbox`, and every enqueue NOTIFYs in its transaction (delivered on commit),
so a reply queued by whichever process took the update leaves within milliseconds, as the
in-process `wake()` does for the leader's own.
Why not limits kept in the database (a shared token bucket row)? Every send would take a row
lock and a round trip on the hottest row of the deployment, a stalled process holding tokens
would still need leases, and 30 a second is one process's easy work; the election costs one
idle connection. SQLite is one process by definition (the file's write lock is per host and
`serve` at scale is PostgreSQL, docs/design.md): there the dispatcher is its own leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.outbox.errors import describe
from bot.outbox.pacing import PacingClock
from storage.db import SessionFactory
from storage.repositories import outbox as repository

logger = logging.getLogger(__name__)

LEADER = Gauge("sipas_outbox_leader", "1 while this process is the elected sender.")


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
        retry_interval: float = 0.1,
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
                    logger.error("outbox: cannot try the sender lock: %s", describe(exc))
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
                logger.error("outbox: sender connection lost (%s); stepping down", describe(exc))
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
