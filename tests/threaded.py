"""A test server on an event loop of its own thread, as if it were a machine of its own.

The fake platforms stamp each call's arrival, and the tests judge the bot's limits by those
stamps to within the pacing margin (31 ms in a second). On the test's own loop a stamp waits
for whatever else that loop is doing (starting processes, posting cases, TLS to the balancer,
checking what arrived): stalls of 50-180 ms were measured there. On a loop of its own the
server stamps a call as soon as the interpreter lets its thread run (a switch interval, 5 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar


class Server(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


@contextlib.asynccontextmanager
async def in_a_thread(server: S, name: str) -> AsyncIterator[S]:
    """Starts `server` on a new event loop in a thread named `name`; stops it on the way out.
    The caller reads the server's state from its own thread (appends and lookups, which the
    interpreter keeps whole) and sets plain attributes; anything else it must not touch."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()

    async def on_its_loop(step: Callable[[], Awaitable[None]]) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(step(), loop))

    try:
        await on_its_loop(server.start)
        yield server
    finally:
        try:
            await on_its_loop(server.stop)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join)
            loop.close()
