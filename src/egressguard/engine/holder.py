"""The snapshot in force, swapped atomically when the policy changes (hot reload).

Enforcement points read `holder.current` per request (one attribute load, no lock).
Whoever learns of a new policy (a file watcher, SIGHUP, the control plane's change feed)
compiles it first and calls `swap` only on success, so a bad policy never replaces a good
one. Listeners (e.g. the gateway's tunnel reaper) are told after each swap.

Big policies (issue 14 item 7) are millions of objects, and three things about them would
hold the GIL for far longer than an event loop may stall, whatever thread does them:

* a pass of the cycle collector over them (a second or more at 100k rules): loaders
  compile inside `loading()` (the collector paused), and a big load or swap moves what is
  alive into the collector's permanent generation (`gc.freeze`), which later passes skip;
* freeing a replaced snapshot in one go (a cascade of deallocations in C): `swap` takes
  an old big snapshot apart a slice at a time, yielding the GIL between slices, when
  nothing else holds it (reference counts say so), else leaves it to whoever does;
* one long C call over the whole document (a parser, a serialiser): the load path avoids
  them (`policy.load`'s JSON path calls back into Python per object).

Frozen objects are still freed by reference counting; snapshots hold no cycles (tests
check it), so nothing leaks through the permanent generation.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from egressguard.engine.snapshot import Snapshot
from egressguard.policy.packed import RuleList

Listener = Callable[["Active"], None]
FREEZE_AT = 5_000
"""Rules (and allowed FQDNs) from which a snapshot counts as big: frozen out of the cycle
collector's passes, and taken apart gradually when replaced."""
_FREEZE_OBJECTS = 100_000  # objects a paused load left alive: freeze them before resuming
_SLICE = 2_000  # entries freed between two GIL yields (well under a millisecond)

_paused = 0
_resume = False
_paused_lock = threading.Lock()


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Pause the cycle collector while a policy is parsed, validated and compiled: its
    passes over the objects being built would hold the GIL (a loop stall) and triple the
    compile time. Nests across threads; collection resumes when the last one ends, after
    a big load's objects are frozen (else the first pass would scan them all at once)."""
    global _paused, _resume
    with _paused_lock:
        _paused += 1
        if _paused == 1:
            _resume = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _resume:
                if gc.get_count()[0] >= _FREEZE_OBJECTS:
                    gc.freeze()
                gc.enable()


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


def _drain(container: Any) -> None:
    """Empty a list or dict a slice at a time, yielding the GIL between slices."""
    while container:
        if isinstance(container, dict):
            for _ in range(min(_SLICE, len(container))):
                container.popitem()
        else:
            del container[-_SLICE:]
        time.sleep(0)


# `sys.getrefcount` of an object held by exactly one owner, read through a local name
# inside `_dismantle`: the owner's reference, the local's and the call's argument.
_ONE_OWNER = 3


def _dismantle(holder_ref: list[Active]) -> None:
    """Free a replaced big snapshot gradually if nothing else holds it: a reader still
    holding any part of it (a request deciding on it, an API call showing its policy)
    shows in the reference counts, and then it is left intact, to be freed whole by
    whoever drops it last. `holder_ref` carries the only reference the caller had."""
    active = holder_ref.pop()
    if sys.getrefcount(active) > _ONE_OWNER - 1:  # only the local `active`
        return
    snapshot = active.snapshot
    if sys.getrefcount(snapshot) > _ONE_OWNER:  # `active.snapshot` and the local
        return
    for index in (snapshot._apps, snapshot._allowed_fqdns, snapshot._net_hosts):
        for name in ("exact", "below", "at_or_below", "globs"):
            table = getattr(index, name)
            if sys.getrefcount(table) <= _ONE_OWNER:
                _drain(table)
            del table
    del index
    policy = snapshot.policy
    if sys.getrefcount(policy) > _ONE_OWNER:  # `snapshot.policy` and the local
        return
    for kind in ("application_rule_collections", "network_rule_collections"):
        collections = getattr(policy, kind)
        if sys.getrefcount(collections) <= _ONE_OWNER:
            for collection in collections:
                rules = collection.rules
                # the list's slot, the loop's name, `rules` and the argument
                if sys.getrefcount(collection) <= _ONE_OWNER and \
                        sys.getrefcount(rules) <= _ONE_OWNER:
                    _drain(rules.records if isinstance(rules, RuleList) else rules)
                del rules
        del collections


class SnapshotHolder:
    def __init__(self, initial: Active) -> None:
        self._active = initial
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        _settle(initial)

    @property
    def active(self) -> Active:
        return self._active

    @property
    def current(self) -> Snapshot:
        return self._active.snapshot

    def swap(self, active: Active) -> None:
        """Put `active` in force for new requests and notify listeners."""
        with self._lock:
            old, self._active = self._active, active
            listeners = list(self._listeners)
        _settle(active)
        for listener in listeners:
            listener(active)
        if _rule_count(old.snapshot) >= FREEZE_AT:
            replaced = [old]
            del old  # so that `_dismantle` can tell whether anyone else holds it
            _dismantle(replaced)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after every swap; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe
