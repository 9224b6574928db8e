"""Moved to `egressguard.catalog.compile` (below the store, which compiles too)."""

from egressguard.catalog.compile import active_of, snapshot_for

__all__ = ["active_of", "snapshot_for"]
