"""Alembic, driven from code: `sipas-bot db upgrade` and `serve` at start-up call `upgrade`.

Several `serve` processes started together on an empty PostgreSQL database all upgrade at
once; without a lock they race to create the same tables and all but one die. On PostgreSQL
the upgrade therefore takes a transaction-level advisory lock (keyed by the schema, so two
deployments in one database do not wait for each other) before Alembic reads the current
revision: the others wait, then find the schema at head and do nothing. SQLite serialises
writers by itself (storage/db.py begins every transaction IMMEDIATE).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Applies migrations on the engine's database, in one transaction where it can."""

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


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def new_revision(engine: AsyncEngine, message: str) -> None:
    """Autogenerates a migration from the models against an up-to-date database (developers)."""

    def run(connection: Connection) -> None:
        command.revision(alembic_config(connection), message=message, autogenerate=True)

    async with engine.begin() as connection:
        await connection.run_sync(run)
