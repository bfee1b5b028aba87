"""Several processes on one database: start-up together on an empty database, and `serve`
processes sharing one bot's limits (the outbox's elected sender)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from storage.migrate import current_revision, upgrade
from tests.conftest import engine_for
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.multiprocess_support import (
    FIRST_CHAT,
    invitations,
    load_units,
    message_calls,
    most_in_a_window,
    per_chat_most,
    post_cases,
    start_serves,
)


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


@pytest.mark.slow
async def test_serve_processes_share_one_bot_across_a_kill(
    database_url: str, tmp_path: Path
) -> None:
    """Three `serve` on an empty PostgreSQL, started together; cases posted to all of them;
    the elected sender killed with SIGKILL mid-backlog. Every invitation arrives, once (but
    for those in flight at the kill: the documented at-least-once window), and the platform
    never sees more than the bot's limit in a second, nor two messages to a chat in one."""
    if not database_url.startswith("postgresql"):
        pytest.skip("several processes share PostgreSQL; SQLite is one process")
    cases = 40
    async with FakeTelegramAPI() as api:
        serves = await start_serves(
            3, database_url, api, tmp_path, send_rate_global="10", send_rate_per_chat="1"
        )
        try:
            await load_units(database_url)
            await post_cases(serves, range(cases))
            async with asyncio.timeout(60):
                await api.wait_until(lambda: len(invitations(api)) >= 10, 40)
                async with aiohttp.ClientSession() as client:
                    leaders = [s for s in serves if await s.is_leader(client)]
                assert len(leaders) == 1, "exactly one elected sender"
                leaders[0].kill()
                killed_at = time.monotonic()
                await api.wait_until(lambda: len(invitations(api)) >= cases, 40)
                await asyncio.sleep(1.5)  # room for a duplicate to show, were there one
        finally:
            await asyncio.gather(*(serve.stop() for serve in serves))

    received = invitations(api)
    assert sorted(received) == [FIRST_CHAT + n for n in range(cases)]
    for calls in received.values():
        texts = [call.text for call in calls]
        if len(texts) != len(set(texts)):
            # Accepted by the platform, not yet marked sent when the process was killed.
            first = calls[0].timestamp
            assert killed_at - 0.5 <= first <= killed_at, texts
    duplicates = sum(len(calls) - 1 for calls in received.values())
    assert duplicates <= 2  # the sends in flight at the kill, at most
    calls = message_calls(api)
    assert most_in_a_window(call.timestamp for call in calls) <= 10
    assert per_chat_most(calls) == 1
