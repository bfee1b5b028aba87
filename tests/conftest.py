"""Shared fixtures: every database test runs on SQLite and on PostgreSQL, each in a fresh
database (a temporary SQLite file, or a fresh PostgreSQL schema dropped afterwards).

PostgreSQL comes from SIPAS_TEST_POSTGRES_URL (default: the machine's local server). Where it
cannot be reached the PostgreSQL half is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.clock import FakeClock
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.migrate import upgrade

# python-telegram-bot 22: timedelta retry_after, without a deprecation warning per 429.
os.environ.setdefault("PTB_TIMEDELTA", "true")

POSTGRES_URL = os.environ.get(
    "SIPAS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _postgres_available() -> str | None:
    try:
        connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}"
    await connection.close()
    return None


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to a fresh, empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    problem = await _postgres_available()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    schema = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def engine_for(url: str) -> AsyncEngine:
    """An engine for a fixture URL (the schema rides in the URL's query for PostgreSQL)."""
    if "?search_path=" in url:
        base, schema = url.split("?search_path=", 1)
        return create_engine(base, schema=schema)
    return create_engine(url)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database: the schema comes from the Alembic migrations, as in production."""
    engine = engine_for(database_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> SessionFactory:
    return create_session_factory(engine)


@pytest.fixture
def clock() -> FakeClock:
    # A Monday morning in Hà Nội (01:00 UTC = 08:00 local).
    return FakeClock(datetime(2026, 11, 23, 1, 0, tzinfo=UTC))


@pytest.fixture(autouse=True)
def _no_sipas_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly; the developer's own SIPAS_* never leak in."""
    for name in list(os.environ):
        if name.startswith("SIPAS_") and name != "SIPAS_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
