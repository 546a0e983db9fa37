"""the fleet: one row per serving process (node registry and heartbeat), the account each user token
selected (shared by every node and worker), and on PostgreSQL a NOTIFY on every change of the cache
generation (so other nodes drop their caches at once, the poll as fallback)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 10:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The channel is xkslab_shared.generation.NOTIFY_CHANNEL; a migration keeps its own copy of a name, so
# that renaming it in the code later does not rewrite history.
_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION xkslab_cache_generation_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('xkslab_cache_generation', NEW.value::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql
"""
_NOTIFY_TRIGGER = """
CREATE TRIGGER xkslab_cache_generation_notify AFTER UPDATE ON cache_generation
FOR EACH ROW EXECUTE FUNCTION xkslab_cache_generation_notify()
"""


def upgrade() -> None:
    op.create_table(
        "fleet_nodes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("urls", sa.Text(), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_nodes")),
    )
    op.create_table(
        "session_accounts",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("acct_id", sa.String(length=36), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_session_accounts")),
    )
    with op.batch_alter_table("session_accounts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_accounts_expires_at"), ["expires_at"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # NOTIFY inside the transaction that raises the counter: PostgreSQL delivers it at that commit,
        # never for a rolled-back change, and no writer can forget it.
        op.execute(_NOTIFY_FUNCTION)
        op.execute(_NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS xkslab_cache_generation_notify ON cache_generation")
        op.execute("DROP FUNCTION IF EXISTS xkslab_cache_generation_notify()")
    with op.batch_alter_table("session_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_accounts_expires_at"))
    op.drop_table("session_accounts")
    op.drop_table("fleet_nodes")
