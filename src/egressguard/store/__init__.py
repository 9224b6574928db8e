"""The control-plane store: SQLite (embedded, WAL) or PostgreSQL, migrated by Alembic.

The names below load on first use (PEP 562): importing a light submodule such as
`egressguard.store.sealing` (which the CLI does at start-up to install the key hook) must
not load SQLAlchemy; `from egressguard.store import open_store` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_FROM_URLS = {"StoreURLError", "normalize_url"}

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


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(
        "egressguard.store.urls" if name in _FROM_URLS else "egressguard.store.store")
    value = getattr(module, name)
    globals()[name] = value
    return value
