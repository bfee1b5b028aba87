"""stored per unit counts of closed weeks, and the triggers that forget them

Revision ID: 7c4d2e9b1a50
Revises: 7d3a9c1e5b20
Create Date: 2026-12-01 02:45:00

Rows per closed week, time zone and part with every unit's counts (handlers/digest.py,
"Stored weeks"); triggers on the six tables the counts read delete a week's part when a write
could change it (storage/snapshot_triggers.py explains which).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage import snapshot_triggers

# revision identifiers, used by Alembic.
revision: str = "7c4d2e9b1a50"
down_revision: str | Sequence[str] | None = "7d3a9c1e5b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "report_snapshots",
        sa.Column("week", sa.String(length=10), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("part", sa.String(length=16), nullable=False),
        sa.Column("week_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("week_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("basis", sa.String(length=200), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("counts", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("week", "timezone", "part", name=op.f("pk_report_snapshots")),
    )
    dialect = op.get_bind().dialect.name
    for statement in snapshot_triggers.create_statements(dialect):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in snapshot_triggers.drop_statements(dialect):
        op.execute(statement)
    op.drop_table("report_snapshots")
