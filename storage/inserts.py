"""`INSERT ... ON CONFLICT` for the two supported backends, spelled once.

Idempotent writes (the outbox's dedupe key, one apology per date, updates seen once) insert and
let the database drop a duplicate atomically, with no SAVEPOINT (which pysqlite would turn
into a premature COMMIT when it is a transaction's first statement).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import ColumnDefault, FromClause, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

# (column name, its Python-side default or onupdate) of a table
_Defaults = tuple[tuple[str, ColumnDefault], ...]


def insert_for(session: AsyncSession, model: type[Any] | Table) -> Any:
    """The backend's own `insert(model)`, which has `on_conflict_do_nothing`."""
    return insert_for_backend(session.get_bind().dialect.name, model)


def insert_for_backend(dialect: str, model: type[Any] | Table) -> Any:
    """`insert_for` by the backend's name: for statements built once per backend."""
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise RuntimeError(f"unsupported database backend {dialect!r}")  # pragma: no cover


def value_parameters(table: FromClause, columns: Sequence[str]) -> dict[str, Any]:
    """The VALUES of an insert built once, each column's value a parameter (`v_<column>`:
    SQLAlchemy keeps the columns' own names for itself), typed as its column."""
    return {name: bindparam(f"v_{name}", type_=table.c[name].type) for name in columns}


def as_value_parameters(values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of one row, for a statement made with `value_parameters`."""
    return {f"v_{name}": value for name, value in values.items()}


async def insert_many(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    ignoring: str | None = None,
) -> None:
    """Inserts the rows (each with the same keys); `ignoring`: the unique column whose taken
    values are skipped, as `ON CONFLICT (column) DO NOTHING`.

    On PostgreSQL, one statement, `INSERT ... SELECT * FROM unnest(<one array per column>)`:
    a row a statement (what executemany sends) runs the executor and the row triggers' setup
    once per row, about half the time of a thousand-row insert. On SQLite, the driver's own
    executemany, the rows bound here (`_bound`). Columns left out get their Python-side
    defaults row by row, as executemany would give them.
    """
    if not rows:
        return
    filled = _with_defaults(table, rows)
    names = tuple(filled[0])
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        rows_bound = _bound(names, _bind_processors(table, names, dialect), filled)
        connection = await session.connection()
        await connection.exec_driver_sql(_insert_sql(table, names, ignoring, dialect), rows_bound)
        return
    statement = _insert_from_arrays(table, names, ignoring)
    await session.execute(statement, {f"a_{name}": [row[name] for row in filled] for name in names})


@lru_cache(maxsize=64)
def _insert_from_arrays(table: Table, names: tuple[str, ...], ignoring: str | None) -> Any:
    # Built once per shape: building it (and its cache key) costs more than running it.
    arrays = [bindparam(f"a_{name}", type_=ARRAY(table.c[name].type)) for name in names]
    source = func.unnest(*arrays).table_valued(*names).render_derived(name="given")
    statement = postgresql.insert(table).from_select(
        names, select(*(source.c[name] for name in names)), include_defaults=False
    )
    if ignoring is not None:
        statement = statement.on_conflict_do_nothing(index_elements=[table.c[ignoring]])
    return statement


# SQLite: the driver's own executemany, the rows bound here. Each value is converted as the
# column's type would bind it (times as text, booleans as 0 and 1, JSON columns as their text),
# by the same processors SQLAlchemy would use. What SQLAlchemy adds on top of that (each row's
# parameters built from the compiled statement, one by one) was most of an insert's CPU: batch
# intake ran 19 % faster without it (docs/performance.md).
_Processors = tuple[Callable[[Any], Any] | None, ...]


@lru_cache(maxsize=64)
def _insert_sql(
    table: Table, names: tuple[str, ...], ignoring: str | None, dialect: Dialect
) -> str:
    quote = dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
        f"({', '.join(quote(name) for name in names)}) VALUES ({', '.join('?' * len(names))})"
    )
    if ignoring is not None:
        sql += f" ON CONFLICT ({quote(ignoring)}) DO NOTHING"
    return sql


@lru_cache(maxsize=64)
def _bind_processors(table: Table, names: tuple[str, ...], dialect: Dialect) -> _Processors:
    # The dialect's own type: a generic DateTime, say, binds as SQLite's DATETIME does.
    types = (table.c[name].type.dialect_impl(dialect) for name in names)
    return tuple(type_.bind_processor(dialect) for type_ in types)


def _bound(
    names: tuple[str, ...], processors: _Processors, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """Each row's values in the order of `names`, as the driver is to bind them.

    A value that is the very object the row before had in that column is not converted again:
    the rows of one insert share their moments (`created_at`, `expires_at`: one datetime for
    all, `_filled`), and a datetime's text was a sixth of the work of intake's inserts."""
    pick = operator.itemgetter(*names)
    converting = [(i, p) for i, p in enumerate(processors) if p is not None]
    last: list[tuple[Any, Any]] = [(_NOTHING, None)] * len(names)
    bound = []
    for row in rows:
        values = [pick(row)] if len(names) == 1 else list(pick(row))
        for i, processor in converting:  # None too, as SQLAlchemy does (JSON's null)
            given = values[i]
            before, converted = last[i]
            if given is not before:
                converted = processor(given)
                last[i] = (given, converted)
            values[i] = converted
        bound.append(tuple(values))
    return bound


_NOTHING = object()  # no row's value: the first row converts each of its values


def _with_defaults(table: Table, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return _filled(rows, _python_side(table, "default"))


def _filled(rows: Sequence[Mapping[str, Any]], defaults: _Defaults) -> list[dict[str, Any]]:
    """The rows with each of `defaults` they do not name, as executemany would give them,
    except that a default that gives a time (`utcnow`) is taken once for all the rows: they
    are written at one moment, and asking the clock for each row of a thousand-case batch
    cost 8 µs a case. Any other callable default (`dict`) is called for each row."""
    moments: dict[str, Any] = {}
    filled_rows = []
    for row in rows:
        filled = dict(row)
        for name, default in defaults:
            if name in filled:
                continue
            if not default.is_callable:
                filled[name] = default.arg
            elif name in moments:
                filled[name] = moments[name]
            else:
                filled[name] = value = default.arg(None)
                if isinstance(value, datetime):
                    moments[name] = value
        filled_rows.append(filled)
    return filled_rows


@lru_cache(maxsize=128)
def _python_side(table: Table, kind: Literal["default", "onupdate"]) -> _Defaults:
    """The columns' defaults (or onupdates) to fill in row by row: the Python-side ones."""
    found: _Defaults = tuple(
        (column.name, value)
        for column in table.columns
        if isinstance(value := getattr(column, kind), ColumnDefault)
    )
    for name, default in found:
        # A SQL expression is the database's to evaluate, row by row: copying it in as a
        # value would be wrong, so say so rather than insert it.
        if default.is_clause_element or default.is_sequence:
            raise TypeError(f"{table.name}.{name}: a SQL default cannot be filled in row by row")
    return found


async def update_many(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]], *, key: str = "id"
) -> None:
    """Updates the row whose `key` each given row names with the given row's other values
    (each row with the same keys, each key once); columns with a Python-side `onupdate` get it
    row by row, as an executemany UPDATE would.

    On PostgreSQL, one statement, `UPDATE ... FROM unnest(<one array per column>)`, joined on
    the key (a unique one: the join reads its index once per row), for the reason `insert_many`
    says. Rows are written in key order, the order a concurrent writer locks them in too.
    """
    if not rows:
        return
    filled = sorted(_with_onupdates(table, rows), key=lambda row: row[key])
    keys = [row[key] for row in filled]
    names = tuple(filled[0])
    if session.get_bind().dialect.name != "postgresql" or len(set(keys)) < len(keys):
        statement = (
            update(table)
            .where(table.c[key] == bindparam(f"u_{key}"))
            .values({name: bindparam(f"u_{name}") for name in names if name != key})
        )
        await session.execute(
            statement, [{f"u_{name}": row[name] for name in names} for row in filled]
        )
        return
    statement = _update_from_arrays(table, names, key)
    await session.execute(statement, {f"a_{name}": [row[name] for row in filled] for name in names})


@lru_cache(maxsize=64)
def _update_from_arrays(table: Table, names: tuple[str, ...], key: str) -> Any:
    arrays = [bindparam(f"a_{name}", type_=ARRAY(table.c[name].type)) for name in names]
    source = func.unnest(*arrays).table_valued(*names).render_derived(name="given")
    return (
        update(table)
        .where(table.c[key] == source.c[key])
        .values({name: source.c[name] for name in names if name != key})
    )


def _with_onupdates(table: Table, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return _filled(rows, _python_side(table, "onupdate"))
