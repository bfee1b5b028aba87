"""web survey form nonce

Revision ID: 5f0c2a9e7b14
Revises: 3c9e51a7d2f4
Create Date: 2026-12-01 00:40:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5f0c2a9e7b14"
down_revision: str | Sequence[str] | None = "3c9e51a7d2f4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("surveys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("web_nonce", sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("surveys", schema=None) as batch_op:
        batch_op.drop_column("web_nonce")
