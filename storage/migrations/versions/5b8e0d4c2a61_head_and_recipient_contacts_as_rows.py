"""heads' and digest recipients' chat addresses as rows (channel, address)

Revision ID: 5b8e0d4c2a61
Revises: 3f1c2a7d9e10
Create Date: 2026-12-01 00:50:00

Like citizens' contacts: one row per channel instead of a column per channel, so a new
channel needs no schema change. The existing columns' addresses are copied over.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5b8e0d4c2a61"
down_revision: str | Sequence[str] | None = "3f1c2a7d9e10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (old column, channel)
_COLUMNS = (("telegram_chat_id", "telegram"), ("zalo_user_id", "zalo"))


def upgrade() -> None:
    op.create_table(
        "head_contacts",
        sa.Column("head_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["head_id"],
            ["unit_heads.id"],
            name=op.f("fk_head_contacts_head_id_unit_heads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("head_id", "channel", name=op.f("pk_head_contacts")),
    )
    with op.batch_alter_table("head_contacts", schema=None) as batch_op:
        batch_op.create_index("ix_head_contacts_address", ["channel", "address"], unique=False)
    op.create_table(
        "recipient_contacts",
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["digest_recipients.id"],
            name=op.f("fk_recipient_contacts_recipient_id_digest_recipients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("recipient_id", "channel", name=op.f("pk_recipient_contacts")),
    )
    for column, channel in _COLUMNS:
        op.execute(
            f"INSERT INTO head_contacts (head_id, channel, address) "
            f"SELECT id, '{channel}', {column} FROM unit_heads WHERE {column} IS NOT NULL"
        )
        op.execute(
            f"INSERT INTO recipient_contacts (recipient_id, channel, address) "
            f"SELECT id, '{channel}', {column} FROM digest_recipients WHERE {column} IS NOT NULL"
        )
    # Plain ALTER TABLE, not a batch copy: on SQLite the copy drops the old table, and with
    # foreign keys on that would cascade to the contact rows just written (SQLite >= 3.35).
    op.drop_index("ix_unit_heads_telegram_chat_id", table_name="unit_heads")
    op.drop_index("ix_unit_heads_zalo_user_id", table_name="unit_heads")
    for table in ("unit_heads", "digest_recipients"):
        for column, _channel in _COLUMNS:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def downgrade() -> None:
    for table in ("unit_heads", "digest_recipients"):
        for column, _channel in _COLUMNS:
            op.execute(f"ALTER TABLE {table} ADD COLUMN {column} VARCHAR(64)")
    op.create_index("ix_unit_heads_telegram_chat_id", "unit_heads", ["telegram_chat_id"])
    op.create_index("ix_unit_heads_zalo_user_id", "unit_heads", ["zalo_user_id"])
    for column, channel in _COLUMNS:
        op.execute(
            f"UPDATE unit_heads SET {column} = (SELECT address FROM head_contacts "
            f"WHERE head_id = unit_heads.id AND channel = '{channel}')"
        )
        op.execute(
            f"UPDATE digest_recipients SET {column} = (SELECT address FROM recipient_contacts "
            f"WHERE recipient_id = digest_recipients.id AND channel = '{channel}')"
        )
    op.drop_table("recipient_contacts")
    with op.batch_alter_table("head_contacts", schema=None) as batch_op:
        batch_op.drop_index("ix_head_contacts_address")
    op.drop_table("head_contacts")
