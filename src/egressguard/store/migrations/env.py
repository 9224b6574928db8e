"""Alembic env: run with a connection passed in `config.attributes["connection"]`."""

from __future__ import annotations

from alembic import context

from egressguard.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table="alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
    # Other areas keep their own tables (and Alembic environment) in the same database.
    include_object=lambda obj, name, type_, reflected, compare_to: (
        type_ != "table" or name in Base.metadata.tables),
)
with context.begin_transaction():
    context.run_migrations()
