"""Shared fixtures: every database test runs on SQLite and on PostgreSQL, each in a fresh
database (a temporary SQLite file, or a fresh PostgreSQL schema dropped afterwards).

PostgreSQL comes from SIPAS_TEST_POSTGRES_URL (default: the machine's local server). Where it
cannot be reached the PostgreSQL half is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_mock_engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.clock import FakeClock
from storage.db import SessionFactory, create_engine, create_session_factory
from storage.migrate import alembic_config, upgrade
from storage.models import Base

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


def _schema_script() -> str:
    """The DDL of the newest schema, stamped with the newest migration, as one SQL script.

    Migrations are slow DDL on PostgreSQL (most of a test's set-up); replaying their result
    in one round trip is a fraction of that. `test_migrations` runs the real migrations from
    empty and checks that they and the models agree, which is what makes this copy faithful.
    """
    statements: list[str] = []

    def record(sql: Any, *_args: Any, **_kwargs: Any) -> None:
        statements.append(str(sql.compile(dialect=postgresql.dialect())).strip() + ";")

    Base.metadata.create_all(create_mock_engine("postgresql+asyncpg://", record), checkfirst=False)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    statements.append(
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL "
        "CONSTRAINT alembic_version_pkc PRIMARY KEY);"
    )
    statements.append(f"INSERT INTO alembic_version (version_num) VALUES ('{head}');")
    return "\n".join(statements)


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A migrated SQLite file to copy, and the PostgreSQL schema script to replay."""
    sqlite_file = tmp_path_factory.mktemp("template") / "template.db"

    async def migrate() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{sqlite_file}")
        await upgrade(engine)
        await engine.dispose()

    asyncio.run(migrate())
    return {"sqlite": str(sqlite_file), "postgresql": _schema_script()}


@pytest.fixture
async def migrated_database_url(
    database_url: str, _templates: dict[str, str], tmp_path: Path
) -> str:
    """Like `database_url`, but already migrated to the newest schema (a fresh copy per test)."""
    if database_url.startswith("sqlite"):
        target = tmp_path / "migrated.db"
        shutil.copyfile(_templates["sqlite"], target)
        return f"sqlite+aiosqlite:///{target}"
    schema = database_url.split("?search_path=", 1)[1]
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
    try:
        # Nothing here needs to survive a crash of the server; don't wait for the disk.
        await admin.execute(
            f'SET synchronous_commit TO off; SET search_path TO "{schema}"; '
            + _templates["postgresql"]
        )
    finally:
        await admin.close()
    return database_url


def engine_for(url: str) -> AsyncEngine:
    """An engine for a fixture URL (the schema rides in the URL's query for PostgreSQL)."""
    if "?search_path=" in url:
        base, schema = url.split("?search_path=", 1)
        return create_engine(base, schema=schema)
    return create_engine(url)


@contextlib.asynccontextmanager
async def sqlite_with_tables(path: Path, metadata: MetaData) -> AsyncIterator[AsyncEngine]:
    """The project's engine on a SQLite file holding `metadata`'s tables (tests of the storage
    layer's own mechanics, on tables of their own)."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database: the schema comes from the Alembic migrations, as in production."""
    engine = engine_for(migrated_database_url)
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


@pytest.fixture
async def cli_database(
    request: pytest.FixtureRequest,
    migrated_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """A migrated database of each backend, named by SIPAS_DATABASE_URL, with units loaded by
    `sipas-bot units load`: the test module's `UNITS_YAML`, or the contract's units file."""
    from tests.cli_support import run_main
    from tests.contract_data import UNITS_YAML

    monkeypatch.setenv("SIPAS_DATABASE_URL", migrated_database_url)
    units = tmp_path / "units.yaml"
    units.write_text(getattr(request.module, "UNITS_YAML", UNITS_YAML), encoding="utf-8")
    assert await run_main(["units", "load", str(units)]) == 0
    return migrated_database_url
