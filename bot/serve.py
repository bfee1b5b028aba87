"""`sipas-bot serve`: the HTTP API, every configured channel and the scheduler in one process,
until SIGINT or SIGTERM, then a clean shutdown (no task left behind, engine disposed).

The demo runs the same code, so what a newcomer sees is what production runs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.app import Services, Startable, run_services
from bot.channels import CHANNELS, channel_parts
from bot.config import Settings, SettingsError
from bot.heap import heap_part
from bot.http.api import create_web_app
from bot.jobs.registry import scheduler_part
from bot.startup import StartupError, open_services

log = logging.getLogger(__name__)

# Long enough for an intake request in flight to commit, short enough for an orchestrator's
# stop timeout (Docker waits 10 s before SIGKILL).
HTTP_SHUTDOWN_SECONDS = 5.0

OnListening = Callable[[str], None]


def require_api_tokens(settings: Settings) -> None:
    """Without a token the API would accept no one; starting anyway would only confuse."""
    if not settings.api_tokens:
        raise SettingsError(
            "SIPAS_API_TOKENS is not set: the one-stop system could not post cases to the API. "
            "Set one or more comma-separated tokens, e.g. "
            "SIPAS_API_TOKENS=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )


def http_part(on_listening: OnListening | None = None) -> Startable:
    """The aiohttp server on SIPAS_HTTP_HOST:SIPAS_HTTP_PORT, as a part of the service."""

    async def start(services: Services) -> Callable[[], Awaitable[None]]:
        settings = services.settings
        runner = web.AppRunner(create_web_app(services), shutdown_timeout=HTTP_SHUTDOWN_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(
                f"cannot listen on {settings.http_host}:{settings.http_port}: {exc.strerror}; "
                "set SIPAS_HTTP_HOST / SIPAS_HTTP_PORT to a free address"
            ) from None
        address = listening_url(runner, settings)
        log.info("HTTP API listening on %s", address)
        if on_listening is not None:
            on_listening(address)
        return runner.cleanup

    return start


def listening_url(runner: web.AppRunner, settings: Settings) -> str:
    """The address actually bound (port 0 picks a free one), as a URL a browser can open."""
    host, port = settings.http_host, settings.http_port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            port = int(address[1])
            break
    if host in {"0.0.0.0", "::", ""}:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def enabled_channels(settings: Settings) -> list[str]:
    """Channel names and modes for the start-up log line; never their tokens."""
    return [
        f"{spec.name} ({spec.mode(settings)})" for spec in CHANNELS if spec.configured(settings)
    ]


async def run_until_stopped(
    services: Services,
    *,
    on_listening: OnListening | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Runs channels, HTTP and scheduler until SIGINT/SIGTERM (or `stop`), then stops them."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def request_stop(name: str) -> None:
        if not stop.is_set():
            log.info("%s received, shutting down", name)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, request_stop, sig.name)
    channels = enabled_channels(services.settings)
    log.info(
        "channels enabled: %s",
        ", ".join(channels)
        if channels
        else "none (citizens can't be reached in chat; set SIPAS_TELEGRAM_TOKEN or "
        "SIPAS_ZALO_TOKEN)",
    )
    # Channels first: they may add webhook routes and citizen links the HTTP app serves. The
    # scheduler last, so no sweep runs before everything it may need is up. The heap is
    # frozen once all of them hold what they keep (bot/heap.py).
    parts = [*channel_parts(services), http_part(on_listening), scheduler_part(), heap_part()]
    try:
        await run_services(services, parts, stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    if leftover:
        log.warning("tasks still pending after shutdown: %s", [t.get_name() for t in leftover])
    log.info("shut down cleanly")


async def serve(settings: Settings) -> None:
    """`sipas-bot serve`."""
    require_api_tokens(settings)
    services = await open_services(settings)
    await run_until_stopped(services)
