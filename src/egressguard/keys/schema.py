"""Tables of the built-in key vault (created by store revision 0100_keyvault).

Key material is stored sealed under the master key (AES-256-GCM, bound to vault, key and
version); public halves of RSA keys are stored in clear.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

vaults = Table(
    "keyvault_vaults", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("soft_delete", Boolean, nullable=False),
    Column("retention_days", Integer, nullable=False),
    Column("purge_protection", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

keys = Table(
    "keyvault_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("vault_id", Integer, ForeignKey("keyvault_vaults.id"), nullable=False),
    Column("name", String(127), nullable=False),
    Column("kty", String(8), nullable=False),
    Column("size", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Column("purge_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("vault_id", "name", name="uq_keyvault_keys_vault_name"),
)

versions = Table(
    "keyvault_key_versions", metadata,
    Column("id", Integer, primary_key=True),
    Column("key_id", Integer, ForeignKey("keyvault_keys.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("version", String(32), nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    Column("public", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("key_id", "version", name="uq_keyvault_key_versions_key_version"),
)

access = Table(
    "keyvault_access", metadata,
    Column("id", Integer, primary_key=True),
    Column("vault_id", Integer, ForeignKey("keyvault_vaults.id"), nullable=False),
    Column("identity", String(200), nullable=False),
    Column("permissions", String(200), nullable=False),
    UniqueConstraint("vault_id", "identity", name="uq_keyvault_access_vault_identity"),
)

# A cluster's customer-managed key (`keyVaultProperties`), beside its policy versions:
# the key is not policy (rolling a policy back must not roll the key back). Revision
# 0400_cluster_keys.
cluster_keys = Table(
    "cluster_keys", metadata,
    Column("cluster", String(100), primary_key=True),
    Column("key_name", String(127), nullable=False),
    Column("key_version", String(64), nullable=True),
    Column("key_vault_uri", String(200), nullable=False),
    Column("user_identity", String(200), nullable=True),
    Column("updated_by", String(200), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
