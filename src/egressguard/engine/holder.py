"""The snapshot in force, swapped atomically when the policy changes (hot reload).

Enforcement points read `holder.current` per request (one attribute load, no lock).
Whoever learns of a new policy (a file watcher, SIGHUP, the control plane's change feed)
compiles it first and calls `swap` only on success, so a bad policy never replaces a good
one. Listeners (e.g. the gateway's tunnel reaper) are told after each swap.

Big policies (issue 14 item 7) are millions of objects: a full pass of the cycle collector
over them holds the GIL for a second or more, stalling the event loop whatever thread
triggers it. So loaders compile inside `loading()` (the collector paused), and a swap to a
big snapshot moves everything alive into the collector's permanent generation
(`gc.freeze`), which later passes skip. Freed snapshots still go by reference counting
(they hold no cycles; tests check it).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from egressguard.engine.snapshot import Snapshot

Listener = Callable[["Active"], None]
FREEZE_AT = 5_000
"""Rules (and allowed FQDNs) from which a swapped-in snapshot is frozen out of the cycle
collector's passes; smaller ones cost it little."""

_paused = 0
_paused_lock = threading.Lock()


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Pause the cycle collector while a policy is parsed, validated and compiled: its
    passes over the objects being built would hold the GIL (a loop stall) and triple the
    compile time. Nests across threads; collection resumes when the last one ends."""
    global _paused
    with _paused_lock:
        _paused += 1
        if _paused == 1:
            was_enabled = gc.isenabled()
            gc.disable()
            _state["resume"] = was_enabled
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _state.pop("resume", False):
                gc.enable()


_state: dict[str, bool] = {}


def _rule_count(snapshot: Snapshot) -> int:
    policy = snapshot.policy
    return (sum(len(c.rules) for c in policy.application_rule_collections)
            + sum(len(c.rules) for c in policy.network_rule_collections)
            + len(policy.allowed_fqdn_list))


@dataclass(frozen=True, slots=True)
class Active:
    """A compiled snapshot with the version label and origin it came from."""

    snapshot: Snapshot
    version: str
    source: str


def _settle(active: Active) -> None:
    """Keep a big snapshot (and all else alive now) out of later collector passes."""
    if _rule_count(active.snapshot) >= FREEZE_AT:
        gc.freeze()


class SnapshotHolder:
    def __init__(self, initial: Active) -> None:
        self._active = initial
        _settle(initial)
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
        _settle(active)
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
