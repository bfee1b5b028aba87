"""SQLite's writers in one process queue on a lock of the process (storage/db.py,
`_WriterQueue`), not in SQLite's polling wait: each is let go whatever way its transaction
ends, readers take nothing, and writers that pile up all get their turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import READ_ONLY, create_engine, create_session_factory

DEADLINE = 10.0  # far beyond any one transaction here; a writer never let go hits it


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'writers.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    yield engine
    await engine.dispose()


async def write(engine: AsyncEngine, body: str) -> None:
    async with create_session_factory(engine).begin() as session:
        await session.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})


async def fail_in(engine: AsyncEngine) -> None:
    async with create_session_factory(engine).begin() as session:
        await session.execute(text("INSERT INTO notes (body) VALUES ('rolled back')"))
        raise RuntimeError("a handler failed")


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(select(func.count()).select_from(text("notes")))).scalar_one()
        )


async def test_the_lock_is_let_go_however_a_transaction_ends(engine: AsyncEngine) -> None:
    async with asyncio.timeout(DEADLINE):
        await write(engine, "committed")
        with pytest.raises(RuntimeError):
            await fail_in(engine)
        # A connection closed in the middle of its transaction (given back to the pool).
        connection = await engine.connect()
        await connection.execute(text("INSERT INTO notes (body) VALUES ('abandoned')"))
        await connection.close()
        await write(engine, "after all that")
    assert await count(engine) == 2


async def test_a_reader_does_not_wait_for_a_writer(engine: AsyncEngine) -> None:
    sessions = create_session_factory(engine)
    async with sessions.begin() as writing:
        await writing.execute(text("INSERT INTO notes (body) VALUES ('in flight')"))
        async with asyncio.timeout(DEADLINE), engine.connect() as connection:
            reading = await connection.execution_options(**{READ_ONLY: True})
            seen = (await reading.execute(text("SELECT count(*) FROM notes"))).scalar_one()
        assert seen == 0  # its snapshot: the write is not committed yet


async def test_writers_piling_up_behind_a_slow_one_all_get_their_turn(
    engine: AsyncEngine,
) -> None:
    sessions = create_session_factory(engine)
    waiting: list[asyncio.Task[None]] = []
    async with sessions.begin() as slow:
        await slow.execute(text("INSERT INTO notes (body) VALUES ('slow')"))
        waiting = [asyncio.create_task(write(engine, f"n{i}")) for i in range(12)]
        await asyncio.sleep(0)  # they start, and queue
        assert not any(task.done() for task in waiting)
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*waiting)
    assert await count(engine) == 13


async def test_engines_of_one_file_take_turns_together(tmp_path: Path) -> None:
    """The app's engine and another of this process on the same file (a test's, a CLI
    command's) wait in one queue, so neither falls back to SQLite's polling wait."""
    path = tmp_path / "shared.db"
    first = create_engine(f"sqlite+aiosqlite:///{path}")
    second = create_engine(f"sqlite+aiosqlite:///{tmp_path / '.' / 'shared.db'}")
    try:
        async with first.begin() as connection:
            await connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
        async with create_session_factory(first).begin() as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('first')"))
            queued = asyncio.create_task(write(second, "second"))
            await asyncio.sleep(0.05)
            assert not queued.done()  # waiting its turn, not failing
        async with asyncio.timeout(DEADLINE):
            await queued
        assert await count(second) == 2
    finally:
        await first.dispose()
        await second.dispose()
