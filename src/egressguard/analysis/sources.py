"""Moved to `egressguard.source` (re-exported here for existing imports)."""

from __future__ import annotations

from pathlib import Path

from egressguard.policy import Policy
from egressguard.source.lookup import SourceError, policy_in_force, store_available


def from_file(path: Path) -> tuple[Policy, str]:
    return policy_in_force(path)


def from_cluster(name: str, store_url: str | None = None) -> tuple[Policy, str]:
    """The current version of a stored cluster."""
    return policy_in_force(None, name, store_url)


def in_force(current: Path | None, cluster: str | None,
             store_url: str | None = None) -> tuple[Policy, str]:
    """The policy a change would replace (see `egressguard.source.policy_in_force`)."""
    return policy_in_force(current, cluster, store_url)


__all__ = ["SourceError", "from_cluster", "from_file", "in_force", "store_available"]
