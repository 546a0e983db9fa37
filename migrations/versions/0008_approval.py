"""quorum approval: groups' approval_policy and the approval requests

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("approval_policy", sa.JSON(), nullable=True))
    op.create_table(
        "approval_requests",
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("acct_id", sa.String(length=36), nullable=False),
        sa.Column("requester_type", sa.String(length=8), nullable=False),
        sa.Column("requester_id", sa.String(length=36), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("operation", sa.String(length=1024), nullable=False),
        sa.Column("sealed_body", sa.LargeBinary(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subjects", sa.JSON(), nullable=False),
        sa.Column("group_ids", sa.JSON(), nullable=False),
        sa.Column("approvers", sa.JSON(), nullable=False),
        sa.Column("denier", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expiry", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result_viewed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["acct_id"],
            ["accounts.acct_id"],
            name=op.f("fk_approval_requests_acct_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_approval_requests")),
    )
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.create_index("ix_approval_requests_acct_status", ["acct_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_approval_requests_requester_id"), ["requester_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_requests_requester_id"))
        batch_op.drop_index("ix_approval_requests_acct_status")
    op.drop_table("approval_requests")
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.drop_column("approval_policy")
