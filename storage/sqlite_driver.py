"""aiosqlite for SQLAlchemy with one trip to the connection's thread per statement.

aiosqlite runs each SQLite connection in a thread of its own, and every call into it is a
trip: the call is queued for the thread, which wakes, runs it and hands the result back to
the event loop through its self-pipe, which then resumes the awaiting greenlet. SQLAlchemy's
adapter (`sqlalchemy.dialects.sqlite.aiosqlite`) makes four such trips a statement: open a
cursor, execute, fetch the rows, close the cursor. Measured with `invitation_bench.py` on
SQLite, a resolution cost about a hundred trips, and each one some tens of microseconds of
the event loop's time: the largest single share of a resolution's CPU after SQLAlchemy's own.

The cursor here does the four on the thread in one call (`_run`), keeps the description,
row count, last row id and rows it brought back, and has nothing left open to close. The
rest (connecting, commit, rollback, the adapter's error mapping, server-side cursors) is
SQLAlchemy's own. It leans on the adapter's internals (`AsyncAdapt_dbapi_cursor`'s slots and
`_execute_mutex`, aiosqlite's `_execute` and `_conn`), which is why `pyproject.toml` pins
SQLAlchemy to 2.1 and aiosqlite to 0.22; `tests/test_sqlite_driver.py` checks the behaviour
SQLAlchemy relies on.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

# What a statement brings back from the thread: description, rows, row count, last row id.
_Outcome = tuple[Any, list[Any] | None, int, int | None]


def _run(connection: sqlite3.Connection, operation: str, parameters: Any) -> _Outcome:
    """One statement, start to finish, on the connection's own thread."""
    cursor = connection.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        # Read after the rows, as the adapter does: with RETURNING, SQLite counts as it steps.
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _run_many(connection: sqlite3.Connection, operation: str, rows: Sequence[Any]) -> _Outcome:
    cursor = connection.cursor()
    try:
        cursor.executemany(operation, rows)
        return None, None, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A statement's results, fetched whole in its one trip (as the adapter's cursor does
    for every statement that is not streamed)."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # Not the parent's: it opens an aiosqlite cursor, a trip of its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]  # no aiosqlite cursor, nothing to close
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]  # None before any insert, as sqlite3

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass  # every row is fetched at once anyway

    async def _async_soft_close(self) -> None:
        return None  # the rows are already here and the sqlite3 cursor closed

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            await_(self._trip(_run, operation, parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        return self

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            await_(self._trip(_run_many, operation, seq_of_parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        return self

    async def _trip(self, function: Any, operation: Any, parameters: Any) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        # The adapter's own mutex: one statement at a time on a connection, as before.
        async with self._adapt_connection._execute_mutex:
            outcome: _Outcome = await connection._execute(  # type: ignore[no-untyped-call]
                function, connection._conn, operation, parameters
            )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows) if rows else collections.deque()


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module SQLAlchemy's aiosqlite dialect is given (`create_engine(module=)`)."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


def one_trip_dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
