"""Start on the last-known-good policy while the store is down; follow the store once it
answers (the feed then swaps in whatever is newer and keeps the cache current)."""

from __future__ import annotations

import logging
import threading

from egressguard.engine.holder import SnapshotHolder
from egressguard.fleet.cache import PolicyCache
from egressguard.source.feed import PolicyFeed, active_for

_log = logging.getLogger("egressguard.fleet")


class ColdStart:
    """Enforce `cache`'s version in `holder` now; open the store at `url` in the
    background (every `retry_interval` s) and hand over to a `PolicyFeed`."""

    def __init__(self, url: str, cluster: str, cache: PolicyCache, *,
                 retry_interval: float = 1.0) -> None:
        version = cache.load()
        if version is None:
            raise LookupError("no last-known-good policy cached for this store and cluster")
        self.url = url
        self.cluster = cluster
        self.cache = cache
        self.number = version.number
        self.holder = SnapshotHolder(active_for(version))
        self.retry_interval = retry_interval
        self.feed: PolicyFeed | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._catch_up, name="policy-cold-start",
                                        daemon=True)

    def start(self) -> ColdStart:
        _log.warning("store unreachable: enforcing the last-known-good policy of cluster "
                     "%s (version %d) from %s until it is back", self.cluster, self.number,
                     self.cache.path)
        self._thread.start()
        return self

    def reload(self) -> bool:
        """Look now (SIGHUP), as `LivePolicy.reload`: only once the store is back."""
        return self.feed.refresh() if self.feed is not None else False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.feed is not None:
            self.feed.stop()

    def _catch_up(self) -> None:
        from egressguard.store import Store

        told = False
        while not self._stop.wait(self.retry_interval):
            try:
                store = Store(self.url, create_default=False)
            except Exception:  # still down: quietly wait (the start logged it once)
                continue
            feed = PolicyFeed(store, self.cluster, self.holder, close_store=True,
                              cache=self.cache)
            try:
                feed.start()
            except Exception as exc:
                if not told:  # once, not once per retry
                    _log.warning("store back but cluster %s cannot be read yet: %s",
                                 self.cluster, " ".join(str(exc).split())[:300])
                    told = True
                feed.stop()
                continue
            self.feed = feed
            _log.warning("store reachable again: cluster %s version %d in force",
                         self.cluster, feed.number)
            return


def start_on_cache(store_url: str | None, cluster: str, exc: BaseException,
                   *, start: bool = True) -> ColdStart | None:
    """When `exc` (raised opening the store at `store_url`, None: the configured one) says
    the store is unreachable and this host caches a last-known-good policy of `cluster`
    for it: the `ColdStart` enforcing it (started unless `start` is false). Otherwise
    None: the caller fails as it would have (no cache means no policy: fail closed)."""
    from egressguard.paths import default_store_url
    from egressguard.store import unavailable_reason
    from egressguard.store.urls import bus_key, normalize_url

    if unavailable_reason(exc) is None:
        return None
    url = normalize_url(store_url or default_store_url())
    try:
        cold = ColdStart(url.render_as_string(hide_password=False), cluster,
                         PolicyCache(bus_key(url), cluster))
    except LookupError:
        return None
    return cold.start() if start else cold
