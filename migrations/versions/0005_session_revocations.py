"""terminated DSM sessions, shared by every replica and kept across restarts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_revocations",
        sa.Column("sid", sa.String(length=36), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid", name=op.f("pk_session_revocations")),
    )
    with op.batch_alter_table("session_revocations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_revocations_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("session_revocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_revocations_expires_at"))
    op.drop_table("session_revocations")
