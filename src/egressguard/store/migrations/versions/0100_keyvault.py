"""built-in key vault: vaults, keys, key versions (sealed material), access policies

Revision ID: 0100_keyvault
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0100_keyvault"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keyvault_vaults",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("soft_delete", sa.Boolean(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("purge_protection", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_keyvault_vaults"),
        sa.UniqueConstraint("name", name="uq_keyvault_vaults_name"),
    )
    op.create_table(
        "keyvault_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vault_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(127), nullable=False),
        sa.Column("kty", sa.String(8), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purge_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_keyvault_keys"),
        sa.ForeignKeyConstraint(["vault_id"], ["keyvault_vaults.id"],
                                name="fk_keyvault_keys_vault_id_keyvault_vaults"),
        sa.UniqueConstraint("vault_id", "name", name="uq_keyvault_keys_vault_name"),
    )
    op.create_table(
        "keyvault_key_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("public", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_keyvault_key_versions"),
        sa.ForeignKeyConstraint(["key_id"], ["keyvault_keys.id"], ondelete="CASCADE",
                                name="fk_keyvault_key_versions_key_id_keyvault_keys"),
        sa.UniqueConstraint("key_id", "version", name="uq_keyvault_key_versions_key_version"),
    )
    op.create_index("ix_keyvault_key_versions_key_id", "keyvault_key_versions", ["key_id"])
    op.create_table(
        "keyvault_access",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vault_id", sa.Integer(), nullable=False),
        sa.Column("identity", sa.String(200), nullable=False),
        sa.Column("permissions", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_keyvault_access"),
        sa.ForeignKeyConstraint(["vault_id"], ["keyvault_vaults.id"],
                                name="fk_keyvault_access_vault_id_keyvault_vaults"),
        sa.UniqueConstraint("vault_id", "identity", name="uq_keyvault_access_vault_identity"),
    )


def downgrade() -> None:
    op.drop_table("keyvault_access")
    op.drop_index("ix_keyvault_key_versions_key_id", table_name="keyvault_key_versions")
    op.drop_table("keyvault_key_versions")
    op.drop_table("keyvault_keys")
    op.drop_table("keyvault_vaults")
