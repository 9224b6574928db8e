"""Moved to `egressguard.source.feed` (re-exported here for existing imports)."""

from egressguard.source.feed import PolicyFeed, active_for

__all__ = ["PolicyFeed", "active_for"]
