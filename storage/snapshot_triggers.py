"""The triggers that keep `report_snapshots` honest: a write that can change a stored week's
figures deletes that week's row, whoever writes and however (ORM, bulk statement, raw SQL).

A stored week's counts read rows whose times fall in or before the week (see
`handlers.digest.week_counts`): surveys completed or invited in it, the answers of those
surveys and their cases' units, escalations opened before its end (open at its end, past an
SLA, resolved, recovered, acknowledged: all after they were opened), their events, cases
resolved in it or promised before its end, apologies written in it. So every row names the
earliest moment it can matter to, and a write of that row (its old and its new version) deletes
every stored week that ends after one of those moments. A write about today matches no stored
(closed) week and deletes nothing; a backdated one, or a change to an old escalation or to a
late case, deletes exactly the weeks it could have changed, and they are counted again.

The statements are spelled once here for both backends; the migration that created the table
and `storage.models` (for a schema built from the models, as the tests do) both use them.
"""

from __future__ import annotations

SNAPSHOT_TABLE = "report_snapshots"

# table -> the moments (SQL over the row, `{row}` is OLD or NEW) a row of it can matter to.
MOMENTS: dict[str, tuple[str, ...]] = {
    "surveys": ("{row}.completed_at", "{row}.invited_at"),
    "answers": ("(SELECT completed_at FROM surveys WHERE id = {row}.survey_id)",),
    "cases": (
        "{row}.due_at",
        "{row}.delay_new_due_at",
        "{row}.resolved_at",
        # A case moved to another unit moves its survey's response and invitation.
        "(SELECT completed_at FROM surveys WHERE case_id = {row}.id)",
        "(SELECT invited_at FROM surveys WHERE case_id = {row}.id)",
    ),
    "escalations": (
        "{row}.opened_at",
        # The case's response becomes one "with an escalation" (the QĐ 766 rate).
        "(SELECT completed_at FROM surveys WHERE case_id = {row}.case_id)",
    ),
    "escalation_events": ("{row}.at",),
    "apologies": ("{row}.created_at",),
}


def _forget(row: str, table: str) -> str:
    # `week_end > NULL` is not true: a moment not set yet (a survey not completed) is no match.
    condition = " OR ".join(f"week_end > {moment.format(row=row)}" for moment in MOMENTS[table])
    return f"DELETE FROM {SNAPSHOT_TABLE} WHERE {condition};"


def create_statements(dialect: str) -> list[str]:
    """The DDL creating every trigger on `dialect` ("sqlite" or "postgresql")."""
    statements: list[str] = []
    for table in MOMENTS:
        if dialect == "postgresql":
            function = f"{SNAPSHOT_TABLE}_forget_{table}"
            statements.append(
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                "BEGIN\n"
                f"  IF TG_OP <> 'INSERT' THEN {_forget('OLD', table)} END IF;\n"
                f"  IF TG_OP <> 'DELETE' THEN {_forget('NEW', table)} END IF;\n"
                "  RETURN NULL;\n"
                "END $$"
            )
            statements.append(
                f"CREATE TRIGGER trg_{SNAPSHOT_TABLE}_{table} "
                f"AFTER INSERT OR UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {function}()"
            )
        elif dialect == "sqlite":
            for event, rows in (
                ("INSERT", ("NEW",)),
                ("UPDATE", ("OLD", "NEW")),
                ("DELETE", ("OLD",)),
            ):
                body = " ".join(_forget(row, table) for row in rows)
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
