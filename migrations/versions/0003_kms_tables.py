"""the KMS emulator's tables: custom key stores, KMS keys, aliases

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kms_custom_key_stores",
        sa.Column("id", sa.String(length=21), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("connection_state", sa.String(length=16), nullable=False),
        sa.Column("connection_error_code", sa.String(length=64), nullable=True),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uri_endpoint", sa.String(length=128), nullable=False),
        sa.Column("uri_path", sa.String(length=128), nullable=False),
        sa.Column("connectivity", sa.String(length=32), nullable=False),
        sa.Column("access_key_id", sa.String(length=30), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(), nullable=False),
        sa.Column("vpc_endpoint_service_name", sa.String(length=64), nullable=True),
        sa.Column("vpc_endpoint_service_owner", sa.String(length=12), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kms_custom_key_stores")),
        sa.UniqueConstraint("name", name=op.f("uq_kms_custom_key_stores_name")),
        sa.UniqueConstraint("uri_endpoint", "uri_path", name=op.f("uq_kms_custom_key_stores_uri_endpoint")),
    )
    op.create_table(
        "kms_keys",
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("key_state", sa.String(length=32), nullable=False),
        sa.Column("origin", sa.String(length=32), nullable=False),
        sa.Column("custom_key_store_id", sa.String(length=21), nullable=True),
        sa.Column("xks_key_id", sa.String(length=128), nullable=True),
        sa.Column("sealed_backing_key", sa.LargeBinary(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deletion_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pending_window_days", sa.Integer(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["custom_key_store_id"],
            ["kms_custom_key_stores.id"],
            name=op.f("fk_kms_keys_custom_key_store_id_kms_custom_key_stores"),
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_kms_keys")),
        sa.UniqueConstraint(
            "custom_key_store_id", "xks_key_id", name=op.f("uq_kms_keys_custom_key_store_id")
        ),
    )
    op.create_table(
        "kms_aliases",
        sa.Column("alias_name", sa.String(length=256), nullable=False),
        sa.Column("target_key_id", sa.String(length=36), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_updated_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_key_id"],
            ["kms_keys.key_id"],
            name=op.f("fk_kms_aliases_target_key_id_kms_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("alias_name", name=op.f("pk_kms_aliases")),
    )
    with op.batch_alter_table("kms_aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kms_aliases_target_key_id"), ["target_key_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("kms_aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_kms_aliases_target_key_id"))
    op.drop_table("kms_aliases")
    op.drop_table("kms_keys")
    op.drop_table("kms_custom_key_stores")
