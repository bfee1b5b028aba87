"""report snapshot triggers: one DELETE per part and row, through an index on week_end

Revision ID: 4e6b8d0f2a13
Revises: 8a1f3c5d7e92
Create Date: 2026-12-01 07:00:00

On PostgreSQL the functions the triggers run are replaced by ones that delete the same weeks
with one statement per part (both versions of an updated row together), skip it when no
counted column changed or no moment is set, and bound it by the earliest moment, which the
new index on (part, week_end) serves (storage/snapshot_triggers.py). A bulk write of cases ran
four DELETEs per row, each reading every stored week. SQLite's triggers are unchanged.
"""

from collections.abc import Sequence

from alembic import op

from storage import snapshot_triggers

revision: str = "4e6b8d0f2a13"
down_revision: str | Sequence[str] | None = "8a1f3c5d7e92"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_report_snapshots_part_week_end", "report_snapshots", ["part", "week_end"], unique=False
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in snapshot_triggers.function_statements():
            op.execute(statement)


def downgrade() -> None:
    # The functions stay: they delete exactly the weeks the earlier ones did.
    op.drop_index("ix_report_snapshots_part_week_end", table_name="report_snapshots")
