"""token grants: a token's role on one named cluster, beside its cluster-wide role

Revision ID: 0410_control_grants
Revises: 0400_cluster_keys
Create Date: 2026-12-01

Existing tokens get no grants: their cluster-wide role keeps applying everywhere.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0410_control_grants"
down_revision = "0400_cluster_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("cluster", sa.String(100), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["api_tokens.id"],
                                name="fk_token_grants_token_id_api_tokens"),
        sa.PrimaryKeyConstraint("id", name="pk_token_grants"),
        sa.UniqueConstraint("token_id", "cluster", name="uq_token_grants"),
    )
    op.create_index("ix_token_grants_token_id", "token_grants", ["token_id"])


def downgrade() -> None:
    op.drop_index("ix_token_grants_token_id", table_name="token_grants")
    op.drop_table("token_grants")
