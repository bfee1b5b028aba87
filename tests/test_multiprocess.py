"""Several processes on one database: start-up together on an empty database, and `serve`
processes sharing one bot's limits (the outbox's elected sender)."""

from __future__ import annotations

import asyncio

from storage.migrate import current_revision, upgrade
from tests.conftest import engine_for


async def test_concurrent_upgrades_on_an_empty_database_serialise(database_url: str) -> None:
    """`serve` processes started together all upgrade at once; every one must succeed."""
    engines = [engine_for(database_url) for _ in range(4)]
    try:
        async with asyncio.timeout(60):  # unserialised, they deadlock or fail
            await asyncio.gather(*(upgrade(engine) for engine in engines))
        revisions = {await current_revision(engine) for engine in engines}
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(revisions) == 1
    assert None not in revisions
