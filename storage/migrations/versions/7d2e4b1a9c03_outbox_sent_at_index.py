"""outbox index on sent_at: a new elected sender reads the last second's sends

Revision ID: 7d2e4b1a9c03
Revises: 5b8e0d4c2a61
Create Date: 2026-12-01 02:50:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "7d2e4b1a9c03"
down_revision: str | Sequence[str] | None = "5b8e0d4c2a61"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_sent_at", ["sent_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_sent_at")
