"""The control-plane store: SQLite (embedded, WAL) or PostgreSQL, migrated by Alembic."""

from egressguard.store.store import (
    DEFAULT_CLUSTER,
    NOTIFY_CHANNEL,
    Ceiling,
    Exists,
    Invalid,
    NotFound,
    Refused,
    Store,
    StoreError,
    StoreUnavailable,
    TokenInfo,
    Version,
    check_policy,
    default_policy,
    open_store,
    unavailable_reason,
    unified_diff,
)
from egressguard.store.urls import StoreURLError, normalize_url

__all__ = [
    "DEFAULT_CLUSTER",
    "NOTIFY_CHANNEL",
    "Ceiling",
    "Exists",
    "Invalid",
    "NotFound",
    "Refused",
    "Store",
    "StoreError",
    "StoreURLError",
    "StoreUnavailable",
    "TokenInfo",
    "Version",
    "check_policy",
    "default_policy",
    "normalize_url",
    "open_store",
    "unavailable_reason",
    "unified_diff",
]
