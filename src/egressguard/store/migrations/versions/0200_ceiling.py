"""Per-cluster ceilings: the most any policy of the cluster may allow

Revision ID: 0200_ceiling
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0200_ceiling"
down_revision = "0100_keyvault"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_ceilings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("strict", sa.Boolean(), nullable=False),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cluster_ceilings"),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"],
                                name="fk_cluster_ceilings_cluster_id_clusters"),
        sa.UniqueConstraint("cluster_id", name="uq_cluster_ceilings_cluster_id"),
    )


def downgrade() -> None:
    op.drop_table("cluster_ceilings")
