"""state every worker and node of a fleet shares: the proxy's fault book, and the DSM's failed-login
counts (per identity and source, and per source)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 13:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "xks_faults",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("fault", sa.Text(), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=False),
        sa.Column("ends_at", sa.Float(), nullable=True),
        sa.Column("left_count", sa.Integer(), nullable=True),
        sa.Column("applied", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_xks_faults")),
    )
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_failures")),
    )
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_login_failures_updated"), ["updated"], unique=False)


def downgrade() -> None:
    op.drop_table("login_failures")
    op.drop_table("xks_faults")
