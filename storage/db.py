"""Engine and session factory; SQLite gets WAL and foreign keys, PostgreSQL gets asyncpg."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SessionFactory = async_sessionmaker[AsyncSession]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT and defers BEGIN; take it over
    # (the recipe of SQLAlchemy's SQLite dialect documentation) and begin explicitly below.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def create_engine(database_url: str | URL, *, schema: str | None = None) -> AsyncEngine:
    """An engine for the URL; `schema` pins PostgreSQL's search_path (tests isolate by schema)."""
    url = make_url(database_url)
    # `?search_path=NAME` in the URL pins the schema too: asyncpg would reject it as an
    # unknown connect argument, and one database may hold several deployments (or tests).
    if "search_path" in url.query:
        schema = schema or str(url.query["search_path"])
        url = url.difference_update_query(["search_path"])
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_backend_name() == "postgresql":
        settings = {"application_name": "sipas-bot"}
        if schema:
            settings["search_path"] = schema
        # A short connect timeout turns "database unreachable" into a quick 503.
        kwargs["connect_args"] = {"server_settings": settings, "timeout": 5}
        kwargs["pool_size"] = 10
    elif url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 5}
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


READ_ONLY = "sipas_read_only"
"""Execution option of a connection that only reads (reports): on SQLite it begins a plain
(deferred) transaction, a WAL snapshot that holds no lock, so a long report never blocks
writers nor waits for them."""


def _sqlite_begin(connection: Any) -> None:
    if connection.get_execution_options().get(READ_ONLY):
        connection.exec_driver_sql("BEGIN")
        return
    # IMMEDIATE takes the write lock up front: a transaction that reads and then writes cannot
    # fail half-way with SQLITE_BUSY because another one wrote in between (WAL readers still
    # proceed). One process on SQLite is the small deployment; PostgreSQL is for concurrency.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgresql(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


async def ping(engine: AsyncEngine) -> None:
    """Raises when the database cannot be reached; used at start-up and by /healthz."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
