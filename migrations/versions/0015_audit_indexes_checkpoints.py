"""audit log: an index per /sys/v1/logs filter in the answer's order, and verify's signed checkpoints

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 11:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out, not imported from the models: a migration must keep meaning what it meant when written.
FILTERS: dict[str, tuple[str, ...]] = {
    "order": (),
    "action_type": ("action_type",),
    "severity": ("severity",),
    "actor_type": ("actor_type",),
    "actor_id": ("actor_id",),
    "object_id": ("object_id",),
}


def upgrade() -> None:
    # (acct_id, time) and (object_id) are superseded by indexes that also give the answer's order.
    op.drop_index("ix_audit_log_acct_time", table_name="audit_log")
    op.drop_index("ix_audit_log_object_id", table_name="audit_log")
    for name, cols in FILTERS.items():
        op.create_index(f"ix_audit_log_acct_{name}", "audit_log", ["acct_id", *cols, "time", "chain", "seq"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("row_hash", sa.LargeBinary(), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_term", sa.Integer(), nullable=False),
        sa.Column("mac", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    for name in reversed(FILTERS):
        op.drop_index(f"ix_audit_log_acct_{name}", table_name="audit_log")
    op.create_index("ix_audit_log_object_id", "audit_log", ["object_id"])
    op.create_index("ix_audit_log_acct_time", "audit_log", ["acct_id", "time"])
