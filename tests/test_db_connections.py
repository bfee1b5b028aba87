"""Pooled PostgreSQL connections (storage/db.py): a connection idle for a while is pinged
before use and replaced when the server closed it; one used moments ago is not (a ping is a
round trip of every transaction), and intake runs its group again when such a connection
turns out dead, so that no post fails for it."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import storage.db
from storage.models import Case
from tests.api_support import (
    Api,
    api_fixture,  # noqa: F401
    case_body,
    make_api_fixture,  # noqa: F401
)
from tests.conftest import POSTGRES_URL, _asyncpg_dsn


@pytest.fixture(autouse=True)
def _postgresql_only(request: pytest.FixtureRequest) -> None:
    if "sqlite" in request.node.callspec.id:
        pytest.skip("SQLite has no server to close a connection (nor a pool to keep one)")


@pytest.fixture
def pings(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the pings the engine makes."""
    made: list[int] = []
    real = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        made.append(1)
        return bool(real(dbapi_connection))

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return made


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def close_from_the_server(pid: int) -> None:
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_a_connection_used_moments_ago_is_not_pinged(
    engine: AsyncEngine, pings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.db, "TRUSTED_FOR_SECONDS", 3600.0)
    pids = {await backend_pid(engine) for _ in range(5)}
    assert len(pids) == 1 and pings == []
    monkeypatch.setattr(storage.db, "TRUSTED_FOR_SECONDS", 0.0)
    await backend_pid(engine)
    assert pings == [1]


async def test_an_idle_connection_the_server_closed_is_replaced(
    engine: AsyncEngine, pings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await backend_pid(engine)
    await close_from_the_server(first)
    monkeypatch.setattr(storage.db, "TRUSTED_FOR_SECONDS", 0.0)  # it has been idle long
    second = await backend_pid(engine)
    assert second != first and pings


async def test_intake_on_a_connection_the_server_just_closed_is_not_lost(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.db, "TRUSTED_FOR_SECONDS", 3600.0)  # no ping finds it dead
    await api.post_json(case_body("PING-1"), 201)
    await close_from_the_server(await backend_pid(api.services.engine))
    answer = await api.post_json(case_body("PING-2"), 201)
    assert answer["case_code"] == "PING-2"
    assert await api.count(Case, Case.case_code.in_(["PING-1", "PING-2"])) == 2
