"""SQLite's statements make one trip to aiosqlite's thread each (storage/sqlite_driver.py),
and SQLAlchemy still gets from them what it relies on: rows, description, row counts, the
last row id, mapped errors, streamed results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_session_factory
from storage.sqlite_driver import OneTripCursor
from tests.conftest import sqlite_with_tables

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String, nullable=False, unique=True),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_with_tables(tmp_path / "driver.db", metadata) as engine:
        yield engine


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call queued for an aiosqlite connection's thread, by the function's name."""
    made: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return made


async def test_a_statement_is_one_trip_to_the_thread(engine: AsyncEngine, trips: list[str]) -> None:
    async with engine.connect() as connection:
        await connection.execute(select(notes.c.id))  # the connection's own set-up, first
        trips.clear()
        await connection.execute(insert(notes).values(body="một"))
        rows = (await connection.execute(select(notes.c.body))).all()
        assert trips == ["_run", "_run"]
    assert rows == [("một",)]


async def test_rows_counts_and_the_last_row_id_come_back(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        first = await connection.execute(insert(notes).values(body="a"))
        assert first.inserted_primary_key == (1,)  # from the cursor's lastrowid
        many = await connection.execute(insert(notes), [{"body": "b"}, {"body": "c"}])
        assert many.rowcount == 2  # executemany
        returned = await connection.execute(
            insert(notes).values(body="d").returning(notes.c.id, notes.c.body)
        )
        assert returned.all() == [(4, "d")]
        changed = await connection.execute(
            update(notes).where(notes.c.id > 2).values(body=notes.c.body + "!")
        )
        assert changed.rowcount == 2
        empty = await connection.execute(select(notes.c.id).where(notes.c.id > 100))
        assert list(empty.keys()) == ["id"]  # a description even without rows
        assert empty.all() == []
        gone = await connection.execute(delete(notes).where(notes.c.body == "a"))
        assert gone.rowcount == 1
        left = await connection.execute(select(notes.c.body).order_by(notes.c.id))
        assert left.scalars().all() == ["b", "c!", "d!"]


async def test_errors_are_sqlalchemys_and_the_transaction_can_go_on(engine: AsyncEngine) -> None:
    sessions = create_session_factory(engine)
    async with sessions.begin() as session:
        await session.execute(insert(notes).values(body="once"))
    async with sessions() as session:
        with pytest.raises(IntegrityError, match="UNIQUE constraint failed"):
            await session.execute(insert(notes).values(body="once"))
        await session.rollback()
        with pytest.raises(OperationalError, match="no such table"):
            await session.execute(select(Table("missing", MetaData(), Column("id", Integer))))
        await session.rollback()
        await session.execute(insert(notes).values(body="twice"))
        await session.commit()
    async with sessions() as session:
        bodies = (await session.scalars(select(notes.c.body).order_by(notes.c.id))).all()
    assert bodies == ["once", "twice"]


async def test_streamed_results_keep_the_drivers_own_cursor(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(notes), [{"body": f"row {i}"} for i in range(250)])
    async with engine.connect() as connection:
        streamed = await connection.stream(select(notes.c.id).order_by(notes.c.id))
        seen = [row.id async for row in streamed]
    assert seen == list(range(1, 251))


async def test_the_engine_uses_the_one_trip_cursor(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.dbapi_connection.cursor(), OneTripCursor)  # type: ignore[union-attr]
