"""`INSERT ... ON CONFLICT` for the two supported backends, spelled once.

Idempotent writes (the outbox's dedupe key, one apology per date, updates seen once) insert and
let the database drop a duplicate atomically, with no SAVEPOINT (which pysqlite would turn
into a premature COMMIT when it is a transaction's first statement).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def insert_for(session: AsyncSession, model: type[Any]) -> Any:
    """The backend's own `insert(model)`, which has `on_conflict_do_nothing`."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise RuntimeError(f"unsupported database backend {dialect!r}")  # pragma: no cover
