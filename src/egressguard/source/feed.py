"""Keep a `SnapshotHolder` in step with one store cluster (propagation within 1 s).

Three paths, so a change is in force everywhere quickly:

* in-process: a write through a `Store` in this process publishes on `store.bus` and the
  feed swaps at once (the API and the gateway in one `egressguard serve`);
* PostgreSQL: the writer's `pg_notify('egressguard_policy', 'cluster:N')` is delivered on
  commit to every feed's LISTEN connection; a recheck each second covers reconnects;
* SQLite: the feed polls the newest version number every `poll_interval` (200 ms).

A version that no longer compiles (say, the catalog lost a tag) is logged and skipped: the
holder keeps the last good snapshot. So does a store that stops answering: the feed logs
one line when it becomes unreachable and one when it is back (never a traceback per
retry), and `reachable` says which state it is in.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from egressguard.catalog import references
from egressguard.catalog.compile import active_of
from egressguard.engine import References
from egressguard.engine.holder import Active, SnapshotHolder, loading
from egressguard.metrics import POLICY_VERSION
from egressguard.store import NOTIFY_CHANNEL, Store, Version, bus

if TYPE_CHECKING:
    from egressguard.fleet.cache import PolicyCache

_log = logging.getLogger("egressguard.source.feed")


def active_for(version: Version, refs: References | None = None) -> Active:
    """Compile a stored version into what a holder holds."""
    return active_of(version.policy, str(version.number), f"store cluster {version.cluster}",
                     refs)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class PolicyFeed:
    """Follow one cluster's policy in `store` and swap it into `holder`.

    Use::

        feed = PolicyFeed(store, "default")     # or PolicyFeed("postgresql://...", ...)
        holder = feed.start()                   # loads, compiles, starts following
        ...
        feed.stop()
    """

    def __init__(self, store: Store | str, cluster: str = "default",
                 holder: SnapshotHolder | None = None, *, poll_interval: float = 0.2,
                 retry_interval: float = 1.0, close_store: bool | None = None,
                 refs: Callable[[], References] = references,
                 cache: PolicyCache | None = None) -> None:
        """`close_store`: close the store on `stop` (default: only one opened from a URL).
        `cache`: where each version put in force is saved (the last-known-good policy a
        gateway starts on while the store is down, `fleet.coldstart`)."""
        self.store = store if isinstance(store, Store) else Store(store)
        self._owns_store = not isinstance(store, Store) if close_store is None \
            else close_store
        self.cluster = cluster
        self.holder = holder
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.reachable = True
        self._refs = refs
        self.cache = cache
        self._number = 0
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def number(self) -> int:
        """The version number in force."""
        return self._number

    def start(self) -> SnapshotHolder:
        """Put the current version in force, then follow changes in a daemon thread.
        Raises what the store raises when the first read fails (nothing to keep yet)."""
        with loading():
            version = self.store.current(self.cluster)
            active = active_for(version, self._refs())
        if self.holder is None:
            self.holder = SnapshotHolder(active)
        else:
            self.holder.swap(active)
        self._set(version.number)
        if self.cache is not None:
            self.cache.save(version)
        self._unsubscribe = bus.subscribe(self.store.key, self._on_local)
        follow = self._listen if self.store.dialect == "postgresql" else self._poll
        self._thread = threading.Thread(target=follow, name=f"policy-feed-{self.cluster}",
                                        daemon=True)
        self._thread.start()
        return self.holder

    def stop(self) -> None:
        self._stop.set()
        if self._unsubscribe:
            self._unsubscribe()
        if self._thread:
            self._thread.join(timeout=5)
        if self._owns_store:
            self.store.close()

    def refresh(self, hint: int | None = None) -> bool:
        """Load and swap the newest version if it is newer than the one in force."""
        if hint is not None and hint <= self._number:
            return False
        with self._lock:
            latest = self.store.latest_number(self.cluster)
            if latest is None or latest <= self._number:
                return False
            with loading():
                version = self.store.current(self.cluster)
                try:
                    active = active_for(version, self._refs())
                    error: Exception | None = None
                except Exception as exc:  # any bad version is skipped, never fatal
                    error = exc
            if error is not None:
                _log.error("cluster %s version %d does not compile; keeping %d: %s",
                           self.cluster, version.number, self._number, error)
                self._number = version.number  # do not retry the same bad version
                return False
            assert self.holder is not None
            self.holder.swap(active)
            self._set(version.number)
            if self.cache is not None:
                self.cache.save(version)
            _log.info("cluster %s: policy version %d in force", self.cluster, version.number)
            return True

    def _set(self, number: int) -> None:
        if self._number:
            with contextlib.suppress(KeyError):
                POLICY_VERSION.remove(self.cluster, str(self._number))
        POLICY_VERSION.labels(self.cluster, str(number)).set(1)
        self._number = number

    def _mark(self, reachable: bool, exc: BaseException | None = None) -> None:
        """Log a change of reachability once (not once per retry)."""
        with self._state_lock:
            if reachable == self.reachable:
                return
            self.reachable = reachable
        if reachable:
            _log.warning("policy feed for cluster %s: store reachable again",
                         self.cluster)
        else:
            _log.warning("policy feed for cluster %s: store unreachable, keeping version "
                         "%d in force (%s)", self.cluster, self._number,
                         _one_line(exc) if exc else "no answer")

    def _on_local(self, cluster: str, number: int) -> None:
        if cluster == self.cluster:
            self._safe_refresh(number)

    def _safe_refresh(self, hint: int | None = None) -> None:
        try:
            self.refresh(hint)
        except Exception as exc:  # store unreachable: keep the policy in force, retry later
            self._mark(False, exc)
        else:
            self._mark(True)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self._safe_refresh()

    def _conninfo(self) -> str:
        url = self.store.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo(), autocommit=True,
                                     connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._safe_refresh()  # anything missed while (re)connecting
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            cluster, _, number = note.payload.rpartition(":")
                            if cluster == self.cluster:
                                self._safe_refresh(int(number) if number.isdigit() else None)
                        self._safe_refresh()
            except psycopg.Error as exc:
                self._mark(False, exc)
                self._stop.wait(self.retry_interval)
