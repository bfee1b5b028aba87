"""Chat channels. Each configured channel contributes a part to the running service.

`channel_parts` configures the channels at once (their links, senders and webhook routes are
needed before the HTTP server is built) and returns the parts that start and stop them, and
last the outbox dispatcher, which needs every sender.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.app import Services, Startable
    from bot.outbox import Dispatcher

Stop = Callable[[], Awaitable[None]]


def channel_parts(services: Services) -> list[Startable]:
    """The parts of every channel the settings enable (Telegram, Zalo), in start order."""
    parts: list[Startable] = []
    settings = services.settings
    if settings.telegram_token is not None:
        from bot.channels.telegram.channel import configure_telegram

        telegram = configure_telegram(services)

        async def start_telegram(_services: Services) -> Stop:
            await telegram.start()
            return telegram.stop

        parts.append(start_telegram)
    if services.senders:
        parts.append(start_dispatcher)
    return parts


def build_dispatcher(services: Services, channels: list[str] | None = None) -> Dispatcher:
    """A dispatcher over the senders of `channels` (default: every configured channel)."""
    from bot.outbox import Dispatcher

    settings = services.settings
    names = list(services.senders) if channels is None else channels
    return Dispatcher(
        services.sessions,
        {name: services.senders[name] for name in names},
        services.clock,
        global_rate=settings.send_rate_global,
        per_chat_rate=settings.send_rate_per_chat,
    )


async def start_dispatcher(services: Services) -> Stop:
    """Runs the outbox dispatcher in the background until the service stops.

    It sends over the channels that are up. A channel still starting or unreachable keeps its
    messages in the outbox, unclaimed (no attempt is spent on them); when it comes up the
    dispatcher is started again with it, and what waited goes out.
    """
    running: tuple[asyncio.Event, asyncio.Task[None]] | None = None
    sending: list[str] = []
    lock = asyncio.Lock()

    async def stop_running() -> None:
        nonlocal running
        if running is None:
            return
        stop, task = running
        running = None
        services.wake_dispatcher = lambda: None
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def restart() -> None:
        nonlocal running
        nonlocal sending
        async with lock:
            channels = [name for name in services.senders if name in services.channels.up()]
            if channels == sending and (running is not None or not channels):
                return
            await stop_running()
            sending = channels
            if not channels:
                return
            dispatcher = build_dispatcher(services, channels)
            stop = asyncio.Event()
            task = asyncio.create_task(dispatcher.run(stop), name="outbox-dispatcher")
            running = (stop, task)
            services.wake_dispatcher = dispatcher.wake

    restarts: set[asyncio.Task[None]] = set()

    def channel_changed(channel: str, state: str) -> None:
        if channel in services.senders:
            task = asyncio.create_task(restart(), name="outbox-dispatcher-restart")
            restarts.add(task)
            task.add_done_callback(restarts.discard)

    stop_listening = services.channels.listen(channel_changed)
    await restart()

    async def stop_dispatcher() -> None:
        stop_listening()
        for task in list(restarts):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with lock:
            await stop_running()

    return stop_dispatcher
