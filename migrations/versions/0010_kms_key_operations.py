"""KMS key policies, automatic rotation, rotated key material and grants

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("kms_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("rotation_period_days", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("next_rotation_date", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "kms_key_materials",
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("material_id", sa.String(length=64), nullable=False),
        sa.Column("sealed_material", sa.LargeBinary(), nullable=False),
        sa.Column("rotation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotation_type", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["kms_keys.key_id"],
            name=op.f("fk_kms_key_materials_key_id_kms_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", "sequence", name=op.f("pk_kms_key_materials")),
        sa.UniqueConstraint("material_id", name=op.f("uq_kms_key_materials_material_id")),
    )
    op.create_table(
        "kms_grants",
        sa.Column("grant_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("grantee_principal", sa.String(length=256), nullable=True),
        sa.Column("grantee_service_principal", sa.String(length=128), nullable=True),
        sa.Column("retiring_principal", sa.String(length=256), nullable=True),
        sa.Column("retiring_service_principal", sa.String(length=128), nullable=True),
        sa.Column("issuing_account", sa.String(length=256), nullable=False),
        sa.Column("operations", sa.JSON(), nullable=False),
        sa.Column("constraints", sa.JSON(), nullable=True),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["kms_keys.key_id"], name=op.f("fk_kms_grants_key_id_kms_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("grant_id", name=op.f("pk_kms_grants")),
    )
    with op.batch_alter_table("kms_grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kms_grants_key_id"), ["key_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_kms_grants_retiring_principal"), ["retiring_principal"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("kms_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_kms_grants_retiring_principal"))
        batch_op.drop_index(batch_op.f("ix_kms_grants_key_id"))
    op.drop_table("kms_grants")
    op.drop_table("kms_key_materials")
    with op.batch_alter_table("kms_keys", schema=None) as batch_op:
        batch_op.drop_column("next_rotation_date")
        batch_op.drop_column("rotation_period_days")
        batch_op.drop_column("policy")
