"""audit log: per-writer head and prune records (chains anchored across runs)

Revision ID: a0002
Revises: a0001
"""

import sqlalchemy as sa
from alembic import op

revision = "a0002"
down_revision = "a0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_heads",
        sa.Column("writer", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("mac", sa.LargeBinary, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("head_mac", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "audit_prunes",
        sa.Column("writer", sa.String(32), primary_key=True),
        sa.Column("through_seq", sa.BigInteger, nullable=False),
        sa.Column("through_mac", sa.LargeBinary, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("prune_mac", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_prunes")
    op.drop_table("audit_heads")
