"""alias URI path prefixes for XKS apps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 07:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "xks_path_prefixes",
        sa.Column("prefix", sa.String(length=128), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.app_id"], name=op.f("fk_xks_path_prefixes_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("prefix", name=op.f("pk_xks_path_prefixes")),
    )
    with op.batch_alter_table("xks_path_prefixes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_xks_path_prefixes_app_id"), ["app_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("xks_path_prefixes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_xks_path_prefixes_app_id"))
    op.drop_table("xks_path_prefixes")
