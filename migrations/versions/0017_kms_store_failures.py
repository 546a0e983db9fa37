"""the KMS store-failure detector's count on the key store row, shared by every KMS worker

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("kms_custom_key_stores", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("kms_custom_key_stores", schema=None) as batch_op:
        batch_op.drop_column("consecutive_failures")
