"""Keep an `IdentityHolder` in step with the store: a thread polls the identities
table's fingerprint (names and update times, one small query) every `interval` seconds
and swaps the holder when it changes, so a revocation reaches every gateway within
`interval` plus one request. A store that cannot be read keeps the last identities (and
logs once per outage): a gateway does not forget who its workloads are because the
database blinked; revocations made during the outage apply when it is back.

A gateway that starts while the store is down has no identities to keep: its holder
stays empty (no store identity authenticates, so no identity-scoped rule matches: fail
closed) and the follower opens the store every `retry_interval` seconds until it
answers, then follows it as above (`follow_identities`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from egressguard.identity.directory import IdentityHolder
from egressguard.identity.store import IdentityStore

if TYPE_CHECKING:
    from egressguard.store import Store

log = logging.getLogger("egressguard.identity")


class IdentityFollower:
    """Follow `identities` into `holder`; or, with `identities` None, first `connect()`
    (retried every `retry_interval` s while it raises) and follow what it returns,
    closing its store on `stop()`."""

    def __init__(self, identities: IdentityStore | None, holder: IdentityHolder,
                 interval: float = 0.25, *,
                 connect: Callable[[], IdentityStore] | None = None,
                 retry_interval: float = 1.0) -> None:
        assert identities is not None or connect is not None
        self.identities = identities
        self.holder = holder
        self.interval = interval
        self.retry_interval = retry_interval
        self._connect = connect
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: object = None

    def poll(self) -> bool:
        """Read the store once; swap the holder if anything changed."""
        assert self.identities is not None
        fingerprint = self.identities.fingerprint()
        if fingerprint == self._seen:
            return False
        stored = self.identities.load()
        self._seen = fingerprint
        self.holder.swap(stored)
        return True

    def start(self) -> IdentityFollower:
        if self.identities is not None:
            self.poll()  # the first read fails loudly (serve reports it and exits)
        elif not self._connected():
            log.warning("identity: the store is unreachable; no store identity "
                        "authenticates until it answers (retrying every %g s)",
                        self.retry_interval)
        self._thread = threading.Thread(target=self._run, name="identity-follow",
                                        daemon=True)
        self._thread.start()
        return self

    def _connected(self) -> bool:
        """Open the store through `connect` and read it once; False while it fails."""
        assert self._connect is not None
        try:
            identities = self._connect()
        except Exception:
            return False
        try:
            self.identities = identities
            self.poll()
        except Exception:
            return True  # open but not readable yet: `_run` retries (and says so)
        return True

    def _run(self) -> None:
        while self.identities is None:
            if self._stop.wait(self.retry_interval):
                return
            if self._connected():
                log.info("identity: store reachable; following its identities")
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:
                if not failing:
                    log.warning("identity: cannot read the store's identities (%s); "
                                "keeping the last ones", exc)
                failing = True
            else:
                if failing:
                    log.info("identity: store readable again")
                failing = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._connect is not None and self.identities is not None:
            self.identities.store.close()


def follow_identities(url: str, store: Store | None = None, *,
                      seal: Callable[[Store], object] | None = None,
                      interval: float = 0.25) -> tuple[IdentityHolder, IdentityFollower]:
    """The store's identities in a holder kept current (started): the one way `serve`
    and each of its workers follow them. With `store` (open, sealed by the caller) the
    first read is now and a failure raises; without, the store at `url` is opened here,
    `seal(store)` lets it open identities sealed under the bootstrap cluster's key, and
    an unreachable store is retried in the background while the holder stays empty."""
    holder = IdentityHolder()
    if store is not None:
        return holder, IdentityFollower(IdentityStore(store), holder, interval).start()

    def connect() -> IdentityStore:
        from egressguard.store import Store

        opened = Store(url, create_default=False)
        try:
            if seal is not None:
                seal(opened)
        except BaseException:
            opened.close()
            raise
        return IdentityStore(opened)

    return holder, IdentityFollower(None, holder, interval, connect=connect).start()
