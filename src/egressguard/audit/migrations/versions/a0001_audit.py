"""audit log: events and batch chain

Revision ID: a0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "a0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_batches",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("writer", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_time", sa.Float, nullable=False),
        sa.Column("last_time", sa.Float, nullable=False),
        sa.Column("prev_mac", sa.LargeBinary, nullable=False),
        sa.Column("mac", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_audit_batches_writer_seq", "audit_batches", ["writer", "seq"],
                    unique=True)
    op.create_table(
        "audit_events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.BigInteger, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("host", sa.String(260), nullable=False),
        sa.Column("port", sa.Integer),
        sa.Column("resolved_address", sa.String(64), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("callout_type", sa.String(32), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("permitted", sa.Boolean, nullable=False),
        sa.Column("layer", sa.String(32), nullable=False),
        sa.Column("rule", sa.String(300), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("connection_id", sa.String(64), nullable=False),
        sa.Column("bytes_up", sa.BigInteger, nullable=False),
        sa.Column("bytes_down", sa.BigInteger, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("close_cause", sa.String(16), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_audit_events_time", "audit_events", ["time"])
    op.create_index("ix_audit_events_batch", "audit_events", ["batch_id"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("audit_batches")
