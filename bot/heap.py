"""What a process holds for good, taken out of the cyclic garbage collector's full passes.

CPython's collector walks every object it tracks in each full (oldest generation) pass, and a
busy process allocates enough to start one every few requests. Two kinds of long-lived state
made those passes expensive here:

- the start-up: modules, classes, pydantic's validators, SQLAlchemy's mappers and compiled
  statements, the aiohttp app, some 130,000 objects that live until the process exits.
  Measured in one process on SQLite, 10 batches of 1,000 cases spent 480 ms of 2.7 s in 4 full
  passes (about 120 ms each, a pause every request of the moment waits out); frozen, 17-60 ms;
- the digest's decoded weeks (bot/digest/snapshots.py): eight weeks of 700 units are a few
  hundred thousand small objects, and the overview page took 100 or 200 ms by turns.

`gc.freeze()` moves what is alive into a permanent generation the passes skip (what CPython's
documentation suggests for long-lived state). Frozen objects are still freed by reference
counting when dropped; only a cycle among them would wait, which is why everything is
collected first, so that no garbage is frozen with them. Nothing is unfrozen: what is frozen
is meant to live as long as the process.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.app import Services, Startable

log = logging.getLogger(__name__)


def exempt_from_collection() -> int:
    """Collects, then freezes what is alive: the number of objects frozen now."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d objects out of the collector's full passes", frozen)
    return frozen


def heap_part() -> Startable:
    """`exempt_from_collection` as a part of the service: the last to start, so that it takes
    what every other part built."""

    async def start(services: Services) -> Callable[[], Awaitable[None]]:
        exempt_from_collection()

        async def stop() -> None:
            return None

        return stop

    return start
