"""Bulk statements fill Python-side defaults row by row (storage/inserts.py) and refuse a SQL
default, which only the database can evaluate per row."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func

from storage.inserts import _with_defaults


def test_python_defaults_are_filled_and_given_values_kept() -> None:
    table = Table(
        "filled",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("kind", String, default="notice"),
        Column("tries", Integer, default=lambda: 0),
    )
    assert _with_defaults(table, {"id": 1}) == {"id": 1, "kind": "notice", "tries": 0}
    assert _with_defaults(table, {"id": 2, "kind": "reply"})["kind"] == "reply"


def test_a_sql_default_is_refused_rather_than_copied_as_a_value() -> None:
    table = Table(
        "stamped",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("at", Integer, default=func.abs(-1)),
    )
    with pytest.raises(TypeError, match=r"stamped\.at"):
        _with_defaults(table, {"id": 1})
