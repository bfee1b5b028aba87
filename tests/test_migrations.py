"""Migrations build the schema from empty on both databases, and match the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.migrate import HEAD, alembic_config, current_revision, stored_revision, upgrade
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


def test_head_names_the_newest_migration() -> None:
    """`upgrade` trusts `HEAD` to skip Alembic on an up-to-date database: a new migration must
    move it, or databases would stay behind it."""
    newest = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert newest == [HEAD], f"set storage.migrate.HEAD to {newest}"


async def test_a_database_at_head_is_not_handed_to_alembic(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command

    assert await stored_revision(engine) == HEAD
    upgraded: list[str] = []
    monkeypatch.setattr(command, "upgrade", lambda _config, revision: upgraded.append(revision))
    await upgrade(engine)
    assert upgraded == []
    async with engine.begin() as connection:  # one step behind: Alembic is asked again
        await connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    assert await stored_revision(engine) == "older"
    await upgrade(engine)
    assert upgraded == ["head"]


async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == [], "models changed without a migration: " + repr(differences)


async def test_heads_and_recipients_addresses_move_to_contact_rows(database_url: str) -> None:
    engine = engine_for(database_url)
    try:
        await upgrade(engine, "3f1c2a7d9e10")
        async with engine.begin() as connection:
            for statement in (
                "INSERT INTO units (id, code, name, created_at, updated_at) "
                "VALUES (1, 'HN', 'Hà Nội', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
                "INSERT INTO unit_heads (id, unit_id, name, telegram_chat_id, zalo_user_id, "
                "updated_at) VALUES (7, 1, 'An', '900', 'zl-900', CURRENT_TIMESTAMP)",
                "INSERT INTO digest_recipients (id, name, scope_unit_id, telegram_chat_id, "
                "zalo_user_id, updated_at) VALUES (3, 'Sở', 1, NULL, 'z950', CURRENT_TIMESTAMP)",
            ):
                await connection.execute(text(statement))
        await upgrade(engine)
        async with engine.connect() as connection:
            heads = await connection.execute(
                text("SELECT head_id, channel, address FROM head_contacts ORDER BY channel")
            )
            recipients = await connection.execute(
                text("SELECT recipient_id, channel, address FROM recipient_contacts")
            )
            assert [tuple(row) for row in heads] == [(7, "telegram", "900"), (7, "zalo", "zl-900")]
            assert [tuple(row) for row in recipients] == [(3, "zalo", "z950")]
    finally:
        await engine.dispose()
