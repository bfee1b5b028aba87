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
        from bot.channels.telegram import configure_telegram

        telegram = configure_telegram(services)

        async def start_telegram(_services: Services) -> Stop:
            await telegram.start()
            return telegram.stop

        parts.append(start_telegram)
    if services.senders:
        parts.append(start_dispatcher)
    return parts


def build_dispatcher(services: Services) -> Dispatcher:
    from bot.outbox import Dispatcher

    settings = services.settings
    return Dispatcher(
        services.sessions,
        services.senders,
        services.clock,
        global_rate=settings.send_rate_global,
        per_chat_rate=settings.send_rate_per_chat,
    )


async def start_dispatcher(services: Services) -> Stop:
    """Runs the outbox dispatcher in the background until the service stops."""
    dispatcher = build_dispatcher(services)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop), name="outbox-dispatcher")
    services.wake_dispatcher = dispatcher.wake

    async def stop_dispatcher() -> None:
        services.wake_dispatcher = lambda: None
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop_dispatcher
