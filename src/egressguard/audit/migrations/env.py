"""The audit log's own Alembic environment (version table `alembic_version_audit`), so it
shares a database with the control plane's migrations without touching them."""

from __future__ import annotations

from alembic import context

from egressguard.audit.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="alembic_version_audit",
    include_object=lambda obj, name, type_, reflected, compare_to: (
        type_ != "table" or name in metadata.tables),
)
with context.begin_transaction():
    context.run_migrations()
