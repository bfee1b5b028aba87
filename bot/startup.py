"""Readies a process's services before a command or the service runs: the database reachable
(or a clear error naming it, the password masked), migrated, the units file loaded.

Every command goes through here, `serve` and the one-off ones (`cases import`, `db upgrade`,
`digest`...). It imports only what the database and the domain need, not the HTTP server, the
channels or the scheduler, so that a one-off command starts in about 40 % less time
(docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bot.app import Services, build_services, prepare_database
from bot.config import Settings
from storage.db import ping

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The service cannot start; the message says why and what to do (exit code 1)."""


def masked_url(database_url: str) -> str:
    """The URL as it may be shown to people: the password replaced by ***."""
    return make_url(database_url).render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    # SQLAlchemy wraps the driver's error and appends a link to its docs; the driver's own
    # words say what is wrong (refused, unknown host, bad password, missing directory).
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(cause).strip() or type(cause).__name__
    return f"{type(cause).__name__}: {text}"


async def open_services(settings: Settings) -> Services:
    """Builds the services and readies the database (reachable, migrated, units loaded).

    Fails fast with a `StartupError` naming the database (password masked) when it cannot be
    reached; the engine is disposed on every failure so nothing is left open.
    """
    services = build_services(settings)
    try:
        try:
            await ping(services.engine)
        except Exception as exc:
            raise StartupError(
                f"cannot reach the database at {masked_url(settings.database_url)}: {_reason(exc)}"
            ) from None
        await prepare_database(services)
    except BaseException:
        await services.engine.dispose()
        raise
    log.info("database ready at %s", masked_url(settings.database_url))
    return services


@asynccontextmanager
async def opened_services(settings: Settings) -> AsyncIterator[Services]:
    """`open_services` for a one-off command: the engine is disposed when the block ends."""
    services = await open_services(settings)
    try:
        yield services
    finally:
        await services.engine.dispose()
