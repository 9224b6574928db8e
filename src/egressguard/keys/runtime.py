"""A cluster's customer-managed key at run time: one `Envelope` per process, following
the cluster's `keyVaultProperties`, and the binding of its state to the enforcement
points (Suspended -> every checkpoint fails closed; Running -> they enforce again).

Every gateway of a cluster builds the same envelope from the same store: the key is the
one the cluster names, reached through the built-in vault as the cluster's identity, so
each gateway unwraps every other's data keys. The vault is read every `check_interval`
seconds (5 by default, `serve --key-check-interval`): a changed key URI or pinned version
is followed, an unset version follows the latest, and a disabled, deleted or revoked key,
or an unreachable store, suspends within one interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from egressguard.keys import clusterkeys
from egressguard.keys.cluster import KeyVaultProperties
from egressguard.keys.envelope import RUNNING, SUSPENDED, Envelope, StateChange
from egressguard.keys.provider import KeyUnavailable

log = logging.getLogger("egressguard.keys")
CHECK_INTERVAL = 5.0


class Suspendable(Protocol):
    """What an enforcement point's checkpoint offers (`enforce.checkpoint.Checkpoint`)."""

    def suspend(self, reason: str) -> None: ...

    def resume(self) -> None: ...


def _has_key_table(engine: Any) -> bool:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from egressguard.keys.provider import ProviderUnreachable
    from egressguard.keys.schema import cluster_keys

    try:
        return bool(inspect(engine).has_table(cluster_keys.name))
    except SQLAlchemyError as exc:
        raise ProviderUnreachable(f"cluster keys: store unreachable "
                                  f"({type(exc).__name__})") from None


class ClusterKey:
    """The envelope of `cluster`'s key, re-reading the cluster's key properties before
    each check (a new key URI or version wraps new data keys from then on)."""

    def __init__(self, store_url: str, cluster: str, props: KeyVaultProperties,
                 master_key: bytes, *, check_interval: float = CHECK_INTERVAL) -> None:
        from egressguard.store.db import make_engine

        self.store_url = store_url
        self.cluster = cluster
        self.props = props
        self._master = master_key
        self._engine = make_engine(store_url, pool_size=1)
        self._listeners: list[Callable[[StateChange], None]] = []
        self.envelope = Envelope(self._provider(props), props.key_name, props.key_version,
                                 check_interval=check_interval,
                                 on_state_change=self._changed, refresh=self._refresh)

    @classmethod
    def open(cls, store_url: str, cluster: str, *, check_interval: float = CHECK_INTERVAL,
             start: bool = True) -> ClusterKey | None:
        """The cluster's key, started (checked now, then every interval); None when the
        cluster names no key (the local audit key seals). `KeyUnavailable` when the store
        cannot be read, so that a caller never silently falls back to the local key."""
        from egressguard.keys.master import load_master_key
        from egressguard.store.db import make_engine

        engine = make_engine(store_url, pool_size=1)
        try:
            if not _has_key_table(engine):
                return None  # a store never migrated that far holds no cluster key
            props = clusterkeys.get(engine, cluster)
        finally:
            engine.dispose()
        if props is None:
            return None
        key = cls(store_url, cluster, props, load_master_key(),
                  check_interval=check_interval)
        if start:
            key.envelope.start()
        return key

    def _provider(self, props: KeyVaultProperties) -> Any:
        from egressguard.keys.vault import VaultClient

        identity = props.user_identity or clusterkeys.default_identity(self.cluster)
        return VaultClient.connect(self.store_url, props.vault_name, self._master, identity)

    def _refresh(self, envelope: Envelope) -> None:
        try:
            props = clusterkeys.get(self._engine, self.cluster)
        except KeyUnavailable:
            return  # the check that follows fails the same way and suspends
        if props is None or props == self.props:
            return  # (a removed key keeps sealing under the last one: never in clear)
        log.warning("cluster %s: key changed to %s/keys/%s/%s; new data keys use it",
                    self.cluster, props.key_vault_uri, props.key_name,
                    props.key_version or "latest")
        provider = (envelope.provider if props.key_vault_uri == self.props.key_vault_uri
                    and props.user_identity == self.props.user_identity
                    else self._provider(props))
        self.props = props
        envelope.configure(provider, props.key_name, props.key_version)

    def listen(self, listener: Callable[[StateChange], None]) -> None:
        self._listeners.append(listener)

    def _changed(self, change: StateChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("key state listener failed")

    def close(self) -> None:
        self.envelope.stop()
        self._engine.dispose()


def reader_envelope(store_url: str, cluster: str) -> Envelope | None:
    """The envelope a reader of the audit log opens batches with (checked once: a reader
    needs no periodic check), or None when the cluster names no key or it cannot be read
    (its batches then read as "cannot decrypt", never as tampered)."""
    try:
        key = ClusterKey.open(store_url, cluster, start=False)
    except KeyUnavailable:
        return None
    if key is None:
        return None
    key.envelope.check()
    return key.envelope


def bind(key: ClusterKey, points: Iterable[Suspendable],
         record: Callable[[dict[str, Any]], object] | None = None) -> None:
    """Suspend `points` while the key is unavailable and resume them when it returns,
    now and on every transition; each transition is also passed to `record` (a system
    event: `StateChange.record()` needs no data key)."""
    points = list(points)

    def apply(state: str, reason: str) -> None:
        for point in points:
            if state == SUSPENDED:
                point.suspend(reason)
            else:
                point.resume()

    def changed(change: StateChange) -> None:
        apply(change.state, change.reason)
        if record is not None:
            record(change.record())

    key.listen(changed)
    env = key.envelope
    apply(RUNNING if env.state == RUNNING else SUSPENDED, env.reason)


class StoreKeys:
    """The store's `sealing.Resolver`: each cluster's envelope, opened on first use and
    kept (so its check runs every `check_interval`); a cluster without a key is asked
    again after `recheck_s` (its key may be set meanwhile). `known` are keys this process
    already holds (serve's own cluster), shared rather than opened twice."""

    def __init__(self, store_url: str, *, check_interval: float = CHECK_INTERVAL,
                 known: Iterable[ClusterKey] = (), recheck_s: float = 5.0) -> None:
        import threading

        self.store_url = store_url
        self.check_interval = check_interval
        self.recheck_s = recheck_s
        self._keys: dict[str, ClusterKey] = {k.cluster: k for k in known}
        self._owned: list[ClusterKey] = []
        self._none: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, cluster: str) -> Envelope | None:
        import time

        with self._lock:
            found = self._keys.get(cluster)
            if found is not None:
                return found.envelope
            if time.monotonic() < self._none.get(cluster, 0.0):
                return None
            key = ClusterKey.open(self.store_url, cluster,
                                  check_interval=self.check_interval)
            if key is None:
                self._none[cluster] = time.monotonic() + self.recheck_s
                return None
            self._keys[cluster] = key
            self._owned.append(key)
            return key.envelope

    def forget(self, cluster: str) -> None:
        """Drop a cached "no key" for `cluster` (a write saw its key in the store)."""
        with self._lock:
            self._none.pop(cluster, None)

    def close(self) -> None:
        with self._lock:
            owned, self._owned = self._owned, []
            for key in owned:
                self._keys.pop(key.cluster, None)
        for key in owned:
            key.close()

    @classmethod
    def for_store(cls, store: Any) -> StoreKeys:
        """The factory `store.sealing.install` takes (the CLI installs it)."""
        return cls(store.url.render_as_string(hide_password=False))


def seal_store(store: Any, *, known: Iterable[ClusterKey] = (),
               check_interval: float = CHECK_INTERVAL) -> StoreKeys:
    """Have `store` seal each cluster's policy versions under the cluster's key (and open
    sealed ones); returns the resolver, to `close()` with the store."""
    keys = StoreKeys(store.url.render_as_string(hide_password=False),
                     check_interval=check_interval, known=known)
    store.seal_with(keys)  # (closes the resolver the store had)
    return keys


class KeyRing:
    """Opens data keys wrapped by any cluster's key (`logs verify` of a store shared by
    several clusters): each wrapped key names vault, key and version, and is unwrapped
    through the envelope of a cluster that names that key (`own`, the configured
    cluster's, first; other clusters' are opened once, on first need, as their own
    identities). A key no cluster can unwrap here is `CannotDecrypt` naming the cluster
    whose key it is, never a tampered record."""

    def __init__(self, store_url: str, own: Envelope | None = None,
                 own_cluster: str | None = None) -> None:
        self.store_url = store_url
        self._envelopes: dict[str, Envelope | None] = {}
        if own_cluster is not None:
            self._envelopes[own_cluster] = own
        self._named: dict[str, KeyVaultProperties] | None = None

    def _clusters_for(self, vault_uri: str, key: str) -> list[str]:
        if self._named is None:
            from egressguard.store.db import make_engine

            engine = make_engine(self.store_url, pool_size=1)
            try:
                self._named = clusterkeys.all_keys(engine) if _has_key_table(engine) else {}
            finally:
                engine.dispose()
        same = [c for c, p in sorted(self._named.items())
                if p.key_vault_uri.rstrip("/") == vault_uri.rstrip("/")]
        return ([c for c in same if self._named[c].key_name == key]
                + [c for c in same if self._named[c].key_name != key])

    def _envelope(self, cluster: str) -> Envelope | None:
        if cluster not in self._envelopes:
            self._envelopes[cluster] = reader_envelope(self.store_url, cluster)
        return self._envelopes[cluster]

    def reader_key(self, wrapped: bytes) -> Any:
        from egressguard.keys.envelope import CannotDecrypt, SuspendedError, Tampered
        from egressguard.keys.provider import KeyRequestError, WrappedKey

        try:
            ref = WrappedKey.from_bytes(wrapped)
        except KeyRequestError as exc:  # the header itself was altered
            raise Tampered(f"wrapped data key unreadable: {exc}") from None
        clusters = self._clusters_for(ref.vault_uri, ref.key)
        if not clusters:
            raise CannotDecrypt(ref.kid, "no cluster of this store names this key now")
        why: list[str] = []
        for cluster in clusters:
            envelope = self._envelope(cluster)
            if envelope is None:
                why.append(f"cluster {cluster}'s key cannot be read here")
                continue
            try:
                return envelope.reader_key(wrapped)
            except CannotDecrypt as exc:
                why.append(f"cluster {cluster}'s key: {exc.reason}")
            except SuspendedError as exc:
                why.append(f"cluster {cluster}'s key: {exc}")
        raise CannotDecrypt(ref.kid, "; ".join(why))
