"""Where the policy in force comes from, decided once for every command and enforcement
point: a policy file (`--policy F`), else a store cluster (`--cluster N`, `--store URL`),
else the store's default cluster when a store is configured or exists, else a built-in
fallback (`DENY_ALL` unless the caller names another).

* `policy_in_force(...)` / `active_in_force(...)`: one look, for one-shot commands
  (`check`, `simulate`, `analyze`, `recommend`, `firewall render|apply`).
* `follow(...)`: a started `LivePolicy` whose `holder` stays current (the file watched,
  the cluster followed through `PolicyFeed`), for long-running points (the gateway, the
  DNS filter, `firewall apply --watch`, `Guard.from_store`).

Errors are `SourceError` with one line saying what could not be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from egressguard import config
from egressguard.catalog.compile import active_of
from egressguard.engine import CompileError
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.errors import InputError
from egressguard.policy import Policy, PolicyError, load_policy
from egressguard.policy.builtins import DENY_ALL, fallback_name
from egressguard.source.feed import PolicyFeed
from egressguard.source.file import PolicyFileWatcher, load_active
from egressguard.store import (
    DEFAULT_CLUSTER,
    NotFound,
    Store,
    StoreError,
    StoreURLError,
    open_store,
)

StoreRef = Store | str | None


class SourceError(InputError, ValueError):
    """A policy source that cannot be read (missing file, unknown cluster, bad store)."""


def store_available(store: StoreRef) -> bool:
    """A store was named or configured, or the embedded one exists in the data home (it
    is never created just to read)."""
    settings = config.current()
    if store is not None or not settings.store.source.startswith("home"):
        return True
    assert settings.home.value is not None
    return (Path(settings.home.value) / config.STORE_FILE).is_file()


def _open(store: StoreRef) -> tuple[Store, bool]:
    """(the store, whether we opened it and must close it)."""
    if isinstance(store, Store):
        return store, False
    try:
        return open_store(store or None), True
    except (StoreURLError, StoreError) as exc:
        raise SourceError(f"cannot open the store: {exc}") from None
    except Exception as exc:  # driver errors: server down, bad credentials
        raise SourceError(f"cannot open the store: {' '.join(str(exc).split())[:300]}"
                          ) from None


def _cluster_error(name: str, exc: StoreError) -> str:
    if isinstance(exc, NotFound):
        return (f"cluster {name!r} not found in the store (`egressguard cluster list` "
                "shows the clusters)")
    return f"cluster {name!r}: {exc}"


def _uses_store(policy: Path | None, cluster: str | None, store: StoreRef) -> bool:
    return policy is None and (cluster is not None or store_available(store))


def _lookup(policy: Path | None, cluster: str | None, store: StoreRef, fallback: Policy
            ) -> tuple[Policy, str, str]:
    """(policy, label, version label)."""
    if policy is not None:
        try:
            return load_policy(policy), str(policy), "file"
        except PolicyError as exc:
            raise SourceError(str(exc)) from None
    if not _uses_store(policy, cluster, store):
        return fallback, fallback_name(fallback), "builtin"
    opened, owned = _open(store)
    name = config.cluster(cluster)
    try:
        version = opened.current(name)
    except StoreError as exc:
        raise SourceError(_cluster_error(name, exc)) from None
    except Exception as exc:  # the store stopped answering
        raise SourceError(f"cluster {name!r}: cannot read the store: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    finally:
        if owned:
            opened.close()
    return version.policy, f"cluster {name} version {version.number}", str(version.number)


def policy_in_force(policy: Path | None = None, cluster: str | None = None,
                    store: StoreRef = None, *, fallback: Policy = DENY_ALL
                    ) -> tuple[Policy, str]:
    """The policy in force and a label for it ("cluster prod version 7", a path, or the
    fallback's name)."""
    found, label, _ = _lookup(policy, cluster, store, fallback)
    return found, label


def active_in_force(policy: Path | None = None, cluster: str | None = None,
                    store: StoreRef = None, *, fallback: Policy = DENY_ALL) -> Active:
    """`policy_in_force`, compiled (with the catalog's references)."""
    found, label, version = _lookup(policy, cluster, store, fallback)
    try:
        return active_of(found, version, label)
    except CompileError as exc:
        raise SourceError(exc.about(label), hint=exc.hint) from None


@dataclass
class LivePolicy:
    """The policy in force, kept current in `holder` until `stop()`.

    `mode` is "file", "store" or "builtin"; `feed` (store mode) and `watcher` (file mode)
    are the followers, for callers that need them (the API reads the feed's store).
    """

    holder: SnapshotHolder
    mode: str
    description: str
    cluster: str = DEFAULT_CLUSTER
    feed: PolicyFeed | None = None
    watcher: PolicyFileWatcher | None = None

    def start(self) -> LivePolicy:
        """Start watching the file (the feed starts in `follow`); idempotent."""
        if self.watcher is not None:
            self.watcher.start()
        return self

    def reload(self) -> bool:
        """Look now (SIGHUP); True if a new policy is in force."""
        if self.watcher is not None:
            return self.watcher.reload()
        if self.feed is not None:
            return self.feed.refresh()
        return False

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.feed is not None:
            self.feed.stop()

    def __enter__(self) -> LivePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def follow(policy: Path | None = None, cluster: str | None = None, store: StoreRef = None,
           *, fallback: Policy = DENY_ALL, interval: float = 0.25,
           start: bool = True, cache: bool = False) -> LivePolicy:
    """The policy in force, followed live: the file reloaded on change (checked every
    `interval` s), or the cluster followed through the store's change feed. The feed
    always starts (it must read the first version); `start=False` defers the file
    watcher's thread to `LivePolicy.start()`. A `Store` passed in stays open on `stop`.
    `cache`: save each version in force as the last-known-good policy (`fleet.cache`)."""
    if policy is not None:
        try:
            holder = SnapshotHolder(load_active(policy))
        except (PolicyError, CompileError, OSError) as exc:
            raise SourceError(str(exc)) from None
        live = LivePolicy(holder, "file", str(policy), config.cluster(cluster),
                          watcher=PolicyFileWatcher(policy, holder, interval))
        return live.start() if start else live
    name = config.cluster(cluster)
    if not _uses_store(policy, cluster, store):
        label = fallback_name(fallback)
        return LivePolicy(SnapshotHolder(active_of(fallback, "builtin", label)), "builtin",
                          label, name)
    opened, owned = _open(store)
    saved = None
    if cache:
        from egressguard.fleet.cache import PolicyCache
        saved = PolicyCache(opened.key, name,  # under the cluster's key when it has one
                            sealer=lambda: opened.sealer_for(name))
    feed = PolicyFeed(opened, name, close_store=owned, cache=saved)
    try:
        holder = feed.start()
    except StoreError as exc:
        feed.stop()
        raise SourceError(_cluster_error(name, exc)) from None
    except Exception as exc:  # unreachable store or a version that does not compile
        feed.stop()
        raise SourceError(f"cluster {name!r}: {' '.join(str(exc).split())[:300]}") from None
    return LivePolicy(holder, "store", f"store cluster {name}", name, feed=feed)
