"""In-process change notifications: a writer tells every feed in the same process at once.

Cross-process delivery is the feeds' job (PostgreSQL LISTEN/NOTIFY, SQLite polling); this
bus only removes the polling delay for gateways that share a process with the API.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

Listener = Callable[[str, int], None]  # (cluster, version number)

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_listeners: dict[str, list[Listener]] = {}


def subscribe(key: str, listener: Listener) -> Callable[[], None]:
    with _lock:
        _listeners.setdefault(key, []).append(listener)

    def unsubscribe() -> None:
        with _lock:
            group = _listeners.get(key, [])
            if listener in group:
                group.remove(listener)

    return unsubscribe


def publish(key: str, cluster: str, number: int) -> None:
    with _lock:
        group = list(_listeners.get(key, []))
    for listener in group:
        try:
            listener(cluster, number)
        except Exception:  # a broken listener must not fail the writer
            _log.exception("policy change listener failed")
