"""Bulk statements fill Python-side defaults row by row (storage/inserts.py) and refuse a SQL
default, which only the database can evaluate per row; on SQLite, rows bound by the project
are stored exactly as SQLAlchemy's executemany stores them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_session_factory
from storage.inserts import _with_defaults, insert_many
from storage.models import OutboxStatus
from storage.types import UTCDateTime
from tests.conftest import sqlite_with_tables


def test_python_defaults_are_filled_and_given_values_kept() -> None:
    table = Table(
        "filled",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("kind", String, default="notice"),
        Column("tries", Integer, default=lambda: 0),
    )
    assert _with_defaults(table, [{"id": 1}]) == [{"id": 1, "kind": "notice", "tries": 0}]
    assert _with_defaults(table, [{"id": 2, "kind": "reply"}])[0]["kind"] == "reply"


def test_a_time_default_is_taken_once_for_the_rows_and_other_callables_per_row() -> None:
    ticks = itertools.count()
    table = Table(
        "timed",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column(
            "at",
            DateTime,
            default=lambda: datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=next(ticks)),
        ),
        Column("detail", JSON, default=dict),
    )
    rows = _with_defaults(table, [{"id": 1}, {"id": 2}, {"id": 3, "at": None}])
    assert [row["at"] for row in rows] == [datetime(2026, 12, 1, tzinfo=UTC)] * 2 + [None]
    assert next(ticks) == 1  # the clock was asked once
    assert rows[0]["detail"] == {} and rows[0]["detail"] is not rows[1]["detail"]


def test_a_sql_default_is_refused_rather_than_copied_as_a_value() -> None:
    table = Table(
        "stamped",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("at", Integer, default=func.abs(-1)),
    )
    with pytest.raises(TypeError, match=r"stamped\.at"):
        _with_defaults(table, [{"id": 1}])


# --- SQLite: rows bound by insert_many, stored as SQLAlchemy's executemany stores them ------

_KINDS = MetaData()


def _columns() -> list[Column[Any]]:
    return [
        Column("id", Integer, primary_key=True),
        Column("name", String),
        Column("note", Text),
        Column("count", BigInteger),
        Column("ratio", Float),
        Column("done", Boolean),
        Column("at", UTCDateTime),
        Column("on_day", Date),
        Column("detail", JSON),
        Column("status", Enum(OutboxStatus, native_enum=False)),
    ]


_VIA_BOUND = Table("via_bound", _KINDS, *_columns())
_VIA_SQLALCHEMY = Table("via_sqlalchemy", _KINDS, *_columns())

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # sqlite3 refuses Cs
_ROW_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": st.none() | _TEXT,
    "note": st.none() | _TEXT,
    "count": st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "ratio": st.none() | st.floats(allow_nan=False, allow_infinity=False),
    "done": st.none() | st.booleans(),
    "at": st.none() | st.datetimes(timezones=st.just(UTC), min_value=datetime(1, 1, 2)),
    "on_day": st.none() | st.dates(),
    "detail": st.none() | st.dictionaries(_TEXT, st.none() | st.integers() | _TEXT, max_size=3),
    "status": st.none() | st.sampled_from(OutboxStatus),
}
_ROW = st.fixed_dictionaries(_ROW_VALUES)


@pytest.fixture
async def sqlite_kinds(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_with_tables(tmp_path / "kinds.db", _KINDS) as engine:
        yield engine


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(_ROW, min_size=1, max_size=8),
    # Columns whose rows all hold the first row's very object (as rows share a moment):
    # `_bound` converts such a value once.
    shared=st.sets(st.sampled_from(sorted(_ROW_VALUES))),
)
async def test_sqlite_rows_bound_by_hand_are_stored_as_sqlalchemy_stores_them(
    sqlite_kinds: AsyncEngine, rows: list[dict[str, Any]], shared: set[str]
) -> None:
    rows = [{**row, **{name: rows[0][name] for name in shared}} for row in rows]
    numbered = [{"id": number, **row} for number, row in enumerate(rows, start=1)]
    sessions = create_session_factory(sqlite_kinds)
    async with sessions.begin() as session:
        await session.execute(delete(_VIA_BOUND))
        await session.execute(delete(_VIA_SQLALCHEMY))
        await insert_many(session, _VIA_BOUND, numbered)
        await session.execute(insert(_VIA_SQLALCHEMY), numbered)

    def stored(table: Table) -> str:
        # Each value with its SQLite storage class: 1 and 1.0, or '1' and 1, are not alike.
        columns = ", ".join(f'"{c.name}", typeof("{c.name}")' for c in table.columns)
        return f"SELECT {columns} FROM {table.name} ORDER BY id"

    async with sqlite_kinds.connect() as connection:
        bound = (await connection.exec_driver_sql(stored(_VIA_BOUND))).all()
        by_sqlalchemy = (await connection.exec_driver_sql(stored(_VIA_SQLALCHEMY))).all()
    assert bound == by_sqlalchemy
