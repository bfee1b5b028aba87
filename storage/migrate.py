"""Alembic, driven from code: `sipas-bot db upgrade` and `serve` at start-up call `upgrade`.

Several `serve` processes started together on an empty PostgreSQL database all upgrade at
once; without a lock they race to create the same tables and all but one die. On PostgreSQL
the upgrade therefore takes a transaction-level advisory lock (keyed by the schema, so two
deployments in one database do not wait for each other) before Alembic reads the current
revision: the others wait, then find the schema at head and do nothing. SQLite serialises
writers by itself (storage/db.py begins every transaction IMMEDIATE).

Nearly every start finds the schema at head already. `upgrade` first reads the stored
revision with one query and compares it with `HEAD`; only a database behind it (or empty)
loads Alembic, its scripts and the lock. That keeps a third of a second of imports out of every
one-off command (`cases import`, `digest`), and lets processes started together skip the lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision. A new migration changes it; tests/test_migrations.py fails,
# naming the new head, until it does.
HEAD = "4e6b8d0f2a13"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Applies migrations on the engine's database, in one transaction where it can."""
    if revision == "head" and await stored_revision(engine) == HEAD:
        return
    from alembic import command

    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Released at commit or rollback, also when the process dies mid-upgrade.
            await connection.execute(_MIGRATION_LOCK)
        await connection.run_sync(run)


_MIGRATION_LOCK = text(
    "SELECT pg_advisory_xact_lock(hashtextextended('sipas-migrate:' || current_schema(), 0))"
)


async def stored_revision(engine: AsyncEngine) -> str | None:
    """The revision the database says it is at; None when it has none (a new database)."""
    try:
        async with engine.connect() as connection:
            found = await connection.execute(text("SELECT version_num FROM alembic_version"))
            versions = found.scalars().all()
    except DBAPIError:
        return None  # no alembic_version table yet
    # Alembic keeps one row per head; the project has one line of migrations.
    return versions[0] if len(versions) == 1 else None


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def new_revision(engine: AsyncEngine, message: str) -> None:
    """Autogenerates a migration from the models against an up-to-date database (developers)."""

    from alembic import command

    def run(connection: Connection) -> None:
        command.revision(alembic_config(connection), message=message, autogenerate=True)

    async with engine.begin() as connection:
        await connection.run_sync(run)
