"""open prompts: the choices open at each address, for typed replies

Revision ID: 3f1c2a7d9e10
Revises: 38e346e30372
Create Date: 2026-12-01 00:45:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "3f1c2a7d9e10"
down_revision: str | Sequence[str] | None = "38e346e30372"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "open_prompts",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", "address", name=op.f("pk_open_prompts")),
    )


def downgrade() -> None:
    op.drop_table("open_prompts")
