"""Engine and session factory; SQLite gets WAL and foreign keys, PostgreSQL gets asyncpg."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy import Table, event, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only

from storage.sqlite_driver import one_trip_dbapi

SessionFactory = async_sessionmaker[AsyncSession]

# How long a SQLite transaction waits for another one's write lock before it gives up (and
# the API answers 503). Writers queue for the one lock; under a backlog (an import in another
# process, a sweep, the dispatcher, intake) a wait of a few seconds is load, not an outage,
# so the wait is longer than any of them holds the lock.
SQLITE_BUSY_TIMEOUT_SECONDS = 15


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT and defers BEGIN; take it over
    # (the recipe of SQLAlchemy's SQLite dialect documentation) and begin explicitly below.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    _enter_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _enter_wal(cursor: Any) -> None:
    """Switches a new database file to WAL (a setting the file keeps).

    The switch needs the file to itself, and SQLite refuses it at once ("database is locked")
    rather than waiting when several connections open a fresh file together, e.g. processes
    starting side by side. One of them switches it; the others retry briefly until the file
    reports WAL. Only a fresh file ever takes this path: afterwards the mode is already WAL.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def create_engine(database_url: str | URL, *, schema: str | None = None) -> AsyncEngine:
    """An engine for the URL; `schema` pins PostgreSQL's search_path (tests isolate by schema)."""
    url = make_url(database_url)
    # `?search_path=NAME` in the URL pins the schema too: asyncpg would reject it as an
    # unknown connect argument, and one database may hold several deployments (or tests).
    if "search_path" in url.query:
        schema = schema or str(url.query["search_path"])
        url = url.difference_update_query(["search_path"])
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        settings = {"application_name": "sipas-bot"}
        if schema:
            settings["search_path"] = schema
        # A short connect timeout turns "database unreachable" into a quick 503.
        kwargs["connect_args"] = {"server_settings": settings, "timeout": 5}
        kwargs["pool_size"] = 10
    elif url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
        if url.get_driver_name() == "aiosqlite":
            kwargs["module"] = one_trip_dbapi()  # one trip to its thread a statement, not four
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "postgresql":
        _ping_when_idle(engine)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        _WriterQueue(url.database).listen(engine)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


# A pooled PostgreSQL connection given back this recently is taken as alive without asking.
TRUSTED_FOR_SECONDS = 2.0
_LAST_USED = "sipas_last_used"


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Pings a pooled connection before use only when it sat idle, where SQLAlchemy's
    `pool_pre_ping` pings before every transaction.

    A server restarted meanwhile leaves dead connections in the pool, and the ping finds them
    (the pool then opens a new one). But a ping is a round trip: one in every ten of an intake
    group's, one in three of a message's send, paid under load when connections are back in
    the pool within milliseconds. A connection that dies in the two seconds after its last use
    fails its next transaction instead: SQLAlchemy then drops every connection of the pool,
    intake runs the group again (`bot/http/api.py`, a replay is harmless) and the other
    callers retry as after any database error.
    """
    dialect = engine.dialect

    def used(_dbapi_connection: Any, record: Any, *_rest: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_USED)
        if last is not None and time.monotonic() - last < TRUSTED_FOR_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The driver's own error (the DBAPI's, which SQLAlchemy has not wrapped yet).
            if dialect.is_disconnect(cast(Any, exc), dbapi_connection, None):
                # The pool drops this connection and checks out another (a new one).
                raise DisconnectionError("a pooled connection was closed by the server") from exc
            raise

    pool = engine.sync_engine.pool
    event.listen(pool, "connect", used)
    event.listen(pool, "checkin", used)
    event.listen(pool, "checkout", checkout)


class _WriterQueue:
    """The writers of one SQLite file in this process take its write lock one after another,
    each woken the moment the one before lets go.

    SQLite's own wait for a busy lock (busy_timeout) polls: it sleeps 1, 2, 5 ... up to 100 ms
    between tries, and whoever tries just as the lock is free wins, however long the others
    waited. With intake, the dispatcher (a write for each message sent) and the sweeps
    writing at once, an invitation's few short transactions waited seconds for a lock that
    was free most of the time. Here a writer first waits its turn on an asyncio lock (first
    come, first served) before `BEGIN IMMEDIATE`, and lets go when its transaction ends.
    SQLAlchemy runs these event hooks in the greenlet of the awaiting task, so they can await
    (`await_only`). Another process writing to the file (`cases import`) still meets
    SQLite's wait; read-only transactions take nothing.
    """

    _HOLDS = "sipas_holds_the_writer_lock"

    def __init__(self, database: str | None) -> None:
        memory = not database or database == ":memory:"
        # One turn for every engine of this process on the file (a test's, the app's).
        self._key = f"memory:{id(self)}" if memory else os.path.realpath(str(database))

    def listen(self, engine: AsyncEngine) -> None:
        # Before _sqlite_begin's BEGIN IMMEDIATE: listeners run in the order they were added.
        event.listen(engine.sync_engine, "begin", self._enter)
        event.listen(engine.sync_engine, "commit", self._leave)
        event.listen(engine.sync_engine, "rollback", self._leave)
        # A connection given back to the pool, or dropped, mid-transaction: let go too.
        event.listen(engine.sync_engine.pool, "reset", self._on_reset)
        event.listen(engine.sync_engine.pool, "close", self._on_close)
        event.listen(engine.sync_engine.pool, "invalidate", self._on_invalidate)

    def _lock(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
        # An asyncio lock belongs to one event loop (a test runs one loop each).
        with _WRITER_TURNS_MADE:
            turns = _WRITER_TURNS.setdefault(loop, {})
            return turns.setdefault(self._key, asyncio.Lock())

    def _enter(self, connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY) or self._HOLDS in connection.info:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a synchronous engine (Alembic's migrations): SQLite's wait alone
        lock = self._lock(loop)
        try:
            # Past SQLite's own patience, go on without a turn: BEGIN IMMEDIATE then waits as
            # it would have and fails with "database is locked" (a 503 at the API).
            await_only(asyncio.wait_for(lock.acquire(), SQLITE_BUSY_TIMEOUT_SECONDS))
        except TimeoutError:
            return
        connection.info[self._HOLDS] = (loop, lock)

    def _leave(self, connection: Any) -> None:
        self._release(connection.info)

    def _on_reset(self, _dbapi_connection: Any, record: Any, _reset_state: Any) -> None:
        self._release(record.info)

    def _on_close(self, _dbapi_connection: Any, record: Any) -> None:
        self._release(record.info)

    def _on_invalidate(self, _dbapi_connection: Any, record: Any, _exception: Any) -> None:
        self._release(record.info)

    def _release(self, info: dict[Any, Any]) -> None:
        # On commit and rollback this runs just before the driver's COMMIT or ROLLBACK: a
        # writer woken by it may find the file still locked for that moment, and SQLite's own
        # wait then retries it within a millisecond.
        held = info.pop(self._HOLDS, None)
        if held is None:
            return
        loop, lock = held
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            lock.release()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(lock.release)  # a connection dropped elsewhere


_WRITER_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
_WRITER_TURNS_MADE = threading.Lock()


READ_ONLY = "sipas_read_only"
"""Execution option of a connection that only reads (reports): on SQLite it begins a plain
(deferred) transaction, a WAL snapshot that holds no lock, so a long report never blocks
writers nor waits for them."""


def _sqlite_begin(connection: Any) -> None:
    if connection.get_execution_options().get(READ_ONLY):
        connection.exec_driver_sql("BEGIN")
        return
    # IMMEDIATE takes the write lock up front: a transaction that reads and then writes cannot
    # fail half-way with SQLITE_BUSY because another one wrote in between (WAL readers still
    # proceed). One process on SQLite is the small deployment; PostgreSQL is for concurrency.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgresql(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


async def ping(engine: AsyncEngine) -> None:
    """Raises when the database cannot be reached; used at start-up and by /healthz."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def allocate_ids(
    session: AsyncSession, counts: Mapping[Table, int]
) -> dict[Table, list[int]]:
    """Fresh values of each table's integer `id`, as many as asked, for rows inserted many at
    once.

    Bulk inserts need each new row's id in order, and `INSERT ... RETURNING` does not promise
    the order on either backend (SQLAlchemy then sends one row per statement on SQLite).
    PostgreSQL hands out ids from the column's sequence. On SQLite the transaction holds the
    write lock from its first statement (`BEGIN IMMEDIATE` above), so no other writer can take
    the ids after the current largest before it commits; one query reads every table's.
    """
    wanted = {table: count for table, count in counts.items() if count > 0}
    found: dict[Table, list[int]] = {table: [] for table in counts}
    if not wanted:
        return found
    if session.get_bind().dialect.name == "postgresql":
        query = text(
            "SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :count)"
        )
        for table, count in wanted.items():
            rows = await session.execute(query, {"table": table.name, "count": count})
            found[table] = [int(value) for value in rows.scalars()]
        return found
    tables = list(wanted)
    largest = (
        await session.execute(select(*(select(func.max(t.c.id)).scalar_subquery() for t in tables)))
    ).one()
    for table, top in zip(tables, largest, strict=True):
        first = int(top or 0) + 1
        found[table] = list(range(first, first + wanted[table]))
    return found
