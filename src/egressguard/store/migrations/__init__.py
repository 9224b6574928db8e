"""Alembic environment of the control-plane store (version table `alembic_version`)."""
