"""audit log: batch, head and prune records name the key that wrapped their data key;
system events (key state changes) in clear

Revision ID: a0003_keys
Revises: a0002
"""

import sqlalchemy as sa
from alembic import op

revision = "a0003_keys"
down_revision = "a0002"
branch_labels = None
depends_on = None

_TABLES = ("audit_batches", "audit_heads", "audit_prunes")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("key_header", sa.LargeBinary, nullable=True))
    op.create_table(
        "audit_system",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_system_time", "audit_system", ["time"])


def downgrade() -> None:
    op.drop_index("ix_audit_system_time", "audit_system")
    op.drop_table("audit_system")
    for table in reversed(_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("key_header")
