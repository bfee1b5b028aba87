"""Bulk statements fill Python-side defaults row by row (storage/inserts.py) and refuse a SQL
default, which only the database can evaluate per row."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, func

from storage.inserts import _with_defaults


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
