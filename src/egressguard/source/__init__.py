"""Where the policy in force comes from: a file, a store cluster, or a named built-in.

`follow(...)` keeps a `SnapshotHolder` current for long-running enforcement points;
`policy_in_force(...)` / `active_in_force(...)` answer once for one-shot commands;
`snapshot_for(policy)` is the one compile entry (catalog references always attached).

The store side (`PolicyFeed`, `follow`, ...) is imported on first use, so a library user
of a policy file (`Guard.from_file`) does not load the database drivers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from egressguard.catalog.compile import active_of, snapshot_for
from egressguard.policy.builtins import DENY_ALL, UNRESTRICTED, fallback_name
from egressguard.source.file import PolicyFileWatcher, holder_for, load_active

if TYPE_CHECKING:
    from egressguard.source.feed import PolicyFeed, active_for
    from egressguard.source.lookup import (
        LivePolicy,
        SourceError,
        active_in_force,
        follow,
        policy_in_force,
        store_available,
    )

_LAZY = {
    "PolicyFeed": "egressguard.source.feed",
    "active_for": "egressguard.source.feed",
    "LivePolicy": "egressguard.source.lookup",
    "SourceError": "egressguard.source.lookup",
    "active_in_force": "egressguard.source.lookup",
    "follow": "egressguard.source.lookup",
    "policy_in_force": "egressguard.source.lookup",
    "store_available": "egressguard.source.lookup",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'egressguard.source' has no attribute {name!r}")


__all__ = [
    "DENY_ALL",
    "UNRESTRICTED",
    "LivePolicy",
    "PolicyFeed",
    "PolicyFileWatcher",
    "SourceError",
    "active_for",
    "active_in_force",
    "active_of",
    "fallback_name",
    "follow",
    "holder_for",
    "load_active",
    "policy_in_force",
    "snapshot_for",
    "store_available",
]
