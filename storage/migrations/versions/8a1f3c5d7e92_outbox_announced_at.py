"""outbox announced_at: a sender records which claimed rows it may be sending

Revision ID: 8a1f3c5d7e92
Revises: 7c4d2e9b1a50
Create Date: 2026-12-01 06:00:00

A sender writes `announced_at` for the next few rows it will send, in one UPDATE, before it
calls the platform for any of them; a sender taking over after it frees the claims without it
at once and makes only the announced ones wait one chat spacing (bot/outbox/dispatcher.py).
Rows claimed before this revision carry none: a takeover from a sender of an older release
(a rolling upgrade) may send one of its in-flight rows again within a second of the first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8a1f3c5d7e92"
down_revision: str | Sequence[str] | None = "7c4d2e9b1a50"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("announced_at")
