"""key history and undo: a group's undo window, a key's deletion date, and the history items (with the
sealed material a destroyed or deleted key keeps until its window closes)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_history_window_s", sa.Integer(), nullable=True))
    with op.batch_alter_table("security_objects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deletion_date", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "key_history",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kid", sa.String(length=36), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("sealed_material", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expiry", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["kid"],
            ["security_objects.kid"],
            name=op.f("fk_key_history_kid_security_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_history")),
    )
    with op.batch_alter_table("key_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_key_history_kid"), ["kid"], unique=False)
        batch_op.create_index(batch_op.f("ix_key_history_expiry"), ["expiry"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("key_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_history_expiry"))
        batch_op.drop_index(batch_op.f("ix_key_history_kid"))
    op.drop_table("key_history")
    with op.batch_alter_table("security_objects", schema=None) as batch_op:
        batch_op.drop_column("deletion_date")
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.drop_column("key_history_window_s")
