"""Moved to `egressguard.source.file` (re-exported here for existing imports)."""

from egressguard.source.file import PolicyFileWatcher, load_active
from egressguard.source.lookup import holder_for

__all__ = ["PolicyFileWatcher", "holder_for", "load_active"]
