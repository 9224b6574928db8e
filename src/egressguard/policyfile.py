"""Moved to `egressguard.source.file` (re-exported here for existing imports)."""

from egressguard.source.file import PolicyFileWatcher, holder_for, load_active

__all__ = ["PolicyFileWatcher", "holder_for", "load_active"]
