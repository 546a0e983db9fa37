"""group policies the lab enforces: cryptographic, key metadata and export policies, and custom metadata

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("cryptographic_policy", "key_metadata_policy", "export_policy", "custom_metadata")


def upgrade() -> None:
    with op.batch_alter_table("groups", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("groups", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
