"""cluster keys: each cluster's keyVaultProperties (customer-managed key)

Revision ID: 0400_cluster_keys
Revises: 0100_keyvault
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0400_cluster_keys"
down_revision = "0200_ceiling"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_keys",
        sa.Column("cluster", sa.String(100), nullable=False),
        sa.Column("key_name", sa.String(127), nullable=False),
        sa.Column("key_version", sa.String(64), nullable=True),
        sa.Column("key_vault_uri", sa.String(200), nullable=False),
        sa.Column("user_identity", sa.String(200), nullable=True),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cluster", name="pk_cluster_keys"),
    )


def downgrade() -> None:
    op.drop_table("cluster_keys")
