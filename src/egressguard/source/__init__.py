"""Where the policy in force comes from: a file, a store cluster, or a named built-in.

`follow(...)` keeps a `SnapshotHolder` current for long-running enforcement points;
`policy_in_force(...)` / `active_in_force(...)` answer once for one-shot commands;
`snapshot_for(policy)` is the one compile entry (catalog references always attached).
"""

from egressguard.source.compile import active_of, snapshot_for
from egressguard.source.defaults import DENY_ALL, UNRESTRICTED
from egressguard.source.feed import PolicyFeed, active_for
from egressguard.source.file import PolicyFileWatcher, load_active
from egressguard.source.lookup import (
    LivePolicy,
    SourceError,
    active_in_force,
    fallback_name,
    follow,
    holder_for,
    policy_in_force,
    store_available,
)

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
