"""Migrations build the schema from empty on both databases, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.migrate import current_revision, upgrade
from storage.models import Base
from tests.conftest import engine_for


async def test_upgrade_from_empty_creates_every_table(database_url: str) -> None:
    engine = engine_for(database_url)
    try:
        assert await current_revision(engine) is None
        await upgrade(engine)
        assert await current_revision(engine) is not None

        def tables(connection: Connection) -> set[str]:
            return set(inspect(connection).get_table_names())

        async with engine.connect() as connection:
            found = await connection.run_sync(tables)
        assert set(Base.metadata.tables) <= found
        await upgrade(engine)  # a second run is a no-op, not an error
    finally:
        await engine.dispose()


async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == [], "models changed without a migration: " + repr(differences)
