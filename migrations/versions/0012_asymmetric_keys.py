"""asymmetric keys: a security object's public key (SubjectPublicKeyInfo DER, not secret), its elliptic
curve, and whether it holds only the public half

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 08:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("security_objects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pub_key", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("elliptic_curve", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("public_only", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("security_objects", schema=None) as batch_op:
        batch_op.drop_column("public_only")
        batch_op.drop_column("elliptic_curve")
        batch_op.drop_column("pub_key")
