"""key components: a group's custodian_policy, and the sealed split of an export by components with the
custodians who have fetched their component

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 07:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("custodian_policy", sa.JSON(), nullable=True))
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sealed_result", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("result_viewers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_column("result_viewers")
        batch_op.drop_column("sealed_result")
    with op.batch_alter_table("groups", schema=None) as batch_op:
        batch_op.drop_column("custodian_policy")
