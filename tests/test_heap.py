"""What a process holds for good is taken out of the collector's full passes (bot/heap.py):
after a collection, so that no garbage is kept with it; `serve` does it once it has started."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

from bot.app import build_services, prepare_database
from bot.config import load_settings
from bot.heap import exempt_from_collection
from bot.serve import run_until_stopped


class _Node:
    other: _Node | None = None


def _garbage_cycle() -> weakref.ref[_Node]:
    """A cycle nothing refers to: only the cyclic collector frees it."""
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_garbage_is_collected_before_what_is_alive_is_frozen() -> None:
    kept = _Node()
    before = gc.get_freeze_count()
    garbage = _garbage_cycle()
    assert garbage() is not None  # not yet collected: the collector has not run since

    frozen = exempt_from_collection()

    assert garbage() is None  # freed before the freeze, not kept for good
    assert frozen > before
    assert gc.is_tracked(kept)
    later = _garbage_cycle()
    gc.collect()
    assert later() is None  # what is made afterwards is collected as usual


async def test_serve_takes_its_start_up_out_of_the_collectors_passes_once_started(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'heap.db'}",
        api_tokens="heap-test-token",
        http_host="127.0.0.1",
        http_port=0,
    )
    services = build_services(settings)
    await prepare_database(services)
    gc.unfreeze()  # what earlier tests froze: from here, only this service's freeze counts
    before = gc.get_freeze_count()
    listening = asyncio.Event()
    stop = asyncio.Event()
    running = asyncio.create_task(
        run_until_stopped(services, on_listening=lambda _url: listening.set(), stop=stop)
    )
    try:
        await asyncio.wait_for(listening.wait(), 30)
        # The heap part starts last and signals nothing a test could await: poll for it,
        # within a deadline.
        async with asyncio.timeout(30):
            while gc.get_freeze_count() == before:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        # Every module, the app and the services themselves: many thousands of objects.
        assert gc.get_freeze_count() > 10_000
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
