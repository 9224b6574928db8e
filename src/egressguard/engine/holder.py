"""The snapshot in force, swapped atomically when the policy changes (hot reload).

Enforcement points read `holder.current` per request (one attribute load, no lock).
Whoever learns of a new policy (a file watcher, SIGHUP, the control plane's change feed)
compiles it first and calls `swap` only on success, so a bad policy never replaces a good
one. Listeners (e.g. the gateway's tunnel reaper) are told after each swap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from egressguard.engine.snapshot import Snapshot

Listener = Callable[["Active"], None]


@dataclass(frozen=True, slots=True)
class Active:
    """A compiled snapshot with the version label and origin it came from."""

    snapshot: Snapshot
    version: str
    source: str


class SnapshotHolder:
    def __init__(self, initial: Active) -> None:
        self._active = initial
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    @property
    def active(self) -> Active:
        return self._active

    @property
    def current(self) -> Snapshot:
        return self._active.snapshot

    def swap(self, active: Active) -> None:
        """Put `active` in force for new requests and notify listeners."""
        with self._lock:
            self._active = active
            listeners = list(self._listeners)
        for listener in listeners:
            listener(active)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after every swap; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe
