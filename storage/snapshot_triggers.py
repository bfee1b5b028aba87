"""The triggers that keep `report_snapshots` honest: a write that can change a stored week's
counts deletes that week's stored part, whoever writes and however (ORM, bulk statement, raw
SQL).

Each table's rows name the moments they can matter to, as a point (the one week containing
it: a survey completed, an answer of a survey completed then, a case resolved, an event, an
apology) or as the start of a span (every week ending after it: an escalation counts as open,
past its SLA, resolved, recovered or acknowledged only after it opened; a case still open
counts as overdue in every week ending after its promised date). A write of a row (its old and
its new version) deletes the stored part of every week it names. The responses' part
("surveys") is named by surveys, answers and, for a case moved to another unit or an
escalation (a response "with an escalation"), the case's survey; the complaints' part
("cases") by cases, escalations, their events and apologies. A write about today names no
stored (closed) week; a backdated one, or a change to an old escalation or a late open case,
names exactly the weeks it could change, and they are counted again.

The statements are spelled once here for both backends; the migrations that created the table
and replaced PostgreSQL's functions, and `storage.models` (for a schema built from the models,
as the tests do) use them. On PostgreSQL a row's trigger runs one DELETE per part at most,
bounded for the index on (part, week_end) (`_forget_on_postgresql`); SQLite's triggers are
cheap enough as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

SNAPSHOT_TABLE = "report_snapshots"

SURVEYS, CASES = "surveys", "cases"  # the parts (handlers.digest.SURVEY_PART, CASE_PART)
_COMPLETED = "(SELECT completed_at FROM surveys WHERE {key} = {{row}}.{column})"
_INVITED = "(SELECT invited_at FROM surveys WHERE case_id = {row}.id)"

_CASE_COUNTED = ("unit_id", "status", "due_at", "delay_new_due_at", "resolved_at")


@dataclass(frozen=True)
class Moment:
    part: str
    kind: str  # "point": the week containing it; "span": every week ending after it
    sql: str  # over `{row}`, OLD or NEW
    # On an update, only when one of these columns changed (None: always); on an insert or a
    # delete, always, unless `updates_only`.
    changed: tuple[str, ...] | None = None
    updates_only: bool = False


MOMENTS: dict[str, tuple[Moment, ...]] = {
    "surveys": (
        Moment(SURVEYS, "point", "{row}.completed_at"),
        Moment(SURVEYS, "point", "{row}.invited_at"),
    ),
    "answers": (Moment(SURVEYS, "point", _COMPLETED.format(key="id", column="survey_id")),),
    "cases": (
        # A case moved to another unit moves its survey's response and invitation (a case
        # created or deleted: its survey's own triggers say it).
        Moment(
            SURVEYS,
            "point",
            _COMPLETED.format(key="case_id", column="id"),
            ("unit_id",),
            updates_only=True,
        ),
        Moment(SURVEYS, "point", _INVITED, ("unit_id",), updates_only=True),
        Moment(CASES, "point", "{row}.resolved_at", _CASE_COUNTED),
        # Overdue while open (storage.repositories.reports.case_counts): from its date on.
        Moment(
            CASES,
            "span",
            "CASE WHEN {row}.status IN ('received', 'delayed') "
            "THEN COALESCE({row}.delay_new_due_at, {row}.due_at) END",
            _CASE_COUNTED,
        ),
    ),
    "escalations": (
        # The case's response is one "with an escalation" (the QĐ 766 rate).
        Moment(SURVEYS, "point", _COMPLETED.format(key="case_id", column="case_id"), ("case_id",)),
        Moment(CASES, "span", "{row}.opened_at"),
    ),
    "escalation_events": (Moment(CASES, "point", "{row}.at"),),
    "apologies": (Moment(CASES, "point", "{row}.created_at"),),
}


def _changed(columns: tuple[str, ...], dialect: str) -> str:
    differ = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return " OR ".join(f"OLD.{column} {differ} NEW.{column}" for column in columns)


def _forget(row: str, table: str, event: str, dialect: str) -> str:
    """The statements run for one version (`row`) of a row written by `event`."""
    # A moment not set (NULL: a survey not completed) compares as not true: no match.
    statements = []
    for part in (SURVEYS, CASES):
        conditions = []
        for moment in MOMENTS[table]:
            if moment.part != part or (moment.updates_only and event != "UPDATE"):
                continue
            conditions.append(_weeks_of(moment, moment.sql.format(row=row), event, dialect))
        if conditions:
            statements.append(
                f"DELETE FROM {SNAPSHOT_TABLE} WHERE part = '{part}' AND "
                f"({' OR '.join(conditions)});"
            )
    return " ".join(statements)


def _weeks_of(moment: Moment, at: str, event: str, dialect: str) -> str:
    """The SQL condition naming the stored weeks a row's `moment` (its value `at`) counts in;
    on an update, only when one of the columns it depends on changed."""
    if moment.kind == "point":
        condition = f"(week_start <= {at} AND week_end > {at})"
    else:
        condition = f"week_end > {at}"
    if event == "UPDATE" and moment.changed:
        condition = f"(({_changed(moment.changed, dialect)}) AND {condition})"
    return condition


def _forget_on_postgresql(table: str, event: str) -> str:
    """The PL/pgSQL run for a row written by `event`: per part, one DELETE naming the weeks of
    both versions, skipped when no counted column changed or no moment is set.

    A trigger runs once per row written, and a statement is what costs there; a bulk write of
    a thousand cases would otherwise run four DELETEs per case. Each DELETE also says the
    weeks it names all end after the earliest moment (`since`), which every condition implies:
    the index on (part, week_end) then finds the few weeks a write about today can name.
    """
    rows = ("OLD", "NEW") if event == "UPDATE" else ("OLD",) if event == "DELETE" else ("NEW",)
    blocks = []
    for part in (SURVEYS, CASES):
        moments = [
            moment
            for moment in MOMENTS[table]
            if moment.part == part and not (moment.updates_only and event != "UPDATE")
        ]
        if not moments:
            continue
        conditions, moments_at = [], []
        for row in rows:
            for moment in moments:
                at = moment.sql.format(row=row)
                conditions.append(_weeks_of(moment, at, event, "postgresql"))
                moments_at.append(at)
        block = (
            f"since := LEAST({', '.join(moments_at)}); "
            "IF since IS NOT NULL THEN "
            f"DELETE FROM {SNAPSHOT_TABLE} WHERE part = '{part}' AND week_end > since AND "
            f"({' OR '.join(conditions)}); END IF;"
        )
        if event == "UPDATE" and all(moment.changed for moment in moments):
            columns = tuple(dict.fromkeys(c for moment in moments for c in moment.changed or ()))
            block = f"IF {_changed(columns, 'postgresql')} THEN {block} END IF;"
        blocks.append(block)
    return " ".join(blocks) or "NULL;"


def function_statements() -> list[str]:
    """PostgreSQL: (re)defines the function each trigger runs (the triggers call them by name)."""
    statements = []
    for table in MOMENTS:
        statements.append(
            f"CREATE OR REPLACE FUNCTION {SNAPSHOT_TABLE}_forget_{table}() RETURNS trigger "
            "LANGUAGE plpgsql AS $$\n"
            "DECLARE since timestamptz;\n"
            "BEGIN\n"
            f"  IF TG_OP = 'INSERT' THEN {_forget_on_postgresql(table, 'INSERT')} END IF;\n"
            f"  IF TG_OP = 'UPDATE' THEN {_forget_on_postgresql(table, 'UPDATE')} END IF;\n"
            f"  IF TG_OP = 'DELETE' THEN {_forget_on_postgresql(table, 'DELETE')} END IF;\n"
            "  RETURN NULL;\n"
            "END $$"
        )
    return statements


def create_statements(dialect: str) -> list[str]:
    """The DDL creating every trigger on `dialect` ("sqlite" or "postgresql")."""
    statements: list[str] = []
    if dialect == "postgresql":
        statements.extend(function_statements())
    for table in MOMENTS:
        if dialect == "postgresql":
            statements.append(
                f"CREATE TRIGGER trg_{SNAPSHOT_TABLE}_{table} "
                f"AFTER INSERT OR UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {SNAPSHOT_TABLE}_forget_{table}()"
            )
        elif dialect == "sqlite":
            for event, rows in (
                ("INSERT", ("NEW",)),
                ("UPDATE", ("OLD", "NEW")),
                ("DELETE", ("OLD",)),
            ):
                body = " ".join(_forget(row, table, event, dialect) for row in rows)
                statements.append(
                    f"CREATE TRIGGER trg_{SNAPSHOT_TABLE}_{table}_{event.lower()} "
                    f"AFTER {event} ON {table} BEGIN {body} END"
                )
        else:  # pragma: no cover
            raise RuntimeError(f"unsupported database backend {dialect!r}")
    return statements


def drop_statements(dialect: str) -> list[str]:
    statements: list[str] = []
    for table in MOMENTS:
        if dialect == "postgresql":
            statements.append(f"DROP TRIGGER IF EXISTS trg_{SNAPSHOT_TABLE}_{table} ON {table}")
            statements.append(f"DROP FUNCTION IF EXISTS {SNAPSHOT_TABLE}_forget_{table}()")
        else:
            for event in ("insert", "update", "delete"):
                statements.append(f"DROP TRIGGER IF EXISTS trg_{SNAPSHOT_TABLE}_{table}_{event}")
    return statements
