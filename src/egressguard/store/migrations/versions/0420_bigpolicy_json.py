"""policy versions: a compact JSON form beside the YAML text, for fast loading

Revision ID: 0420_bigpolicy_json
Revises: 0500_identity_identities
Create Date: 2026-12-01

Existing versions keep NULL and load from their YAML text as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0420_bigpolicy_json"
down_revision = "0500_identity_identities"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("policy_versions") as batch:
        batch.add_column(sa.Column("policy_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("policy_versions") as batch:
        batch.drop_column("policy_json")
