"""escalation overdue since

Revision ID: 3f7a2c9d1e40
Revises: 38e346e30372
Create Date: 2026-11-30 23:45:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "3f7a2c9d1e40"
down_revision: str | Sequence[str] | None = "38e346e30372"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("escalations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("overdue_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("escalations", schema=None) as batch_op:
        batch_op.drop_column("overdue_since")
