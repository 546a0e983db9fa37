"""callers' access keys for the KMS emulator's optional SigV4 verification (kms.verify_sigv4)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kms_access_keys",
        sa.Column("access_key_id", sa.String(length=20), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("access_key_id", name=op.f("pk_kms_access_keys")),
    )
    with op.batch_alter_table("kms_access_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kms_access_keys_user_name"), ["user_name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("kms_access_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_kms_access_keys_user_name"))
    op.drop_table("kms_access_keys")
