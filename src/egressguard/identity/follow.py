"""Keep an `IdentityHolder` in step with the store: a thread polls the identities
table's fingerprint (names and update times, one small query) every `interval` seconds
and swaps the holder when it changes, so a revocation reaches every gateway within
`interval` plus one request. A store that cannot be read keeps the last identities (and
logs once per outage): a gateway does not forget who its workloads are because the
database blinked; revocations made during the outage apply when it is back."""

from __future__ import annotations

import logging
import threading

from egressguard.identity.directory import IdentityHolder
from egressguard.identity.store import IdentityStore

log = logging.getLogger("egressguard.identity")


class IdentityFollower:
    def __init__(self, identities: IdentityStore, holder: IdentityHolder,
                 interval: float = 0.25) -> None:
        self.identities = identities
        self.holder = holder
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: object = None

    def poll(self) -> bool:
        """Read the store once; swap the holder if anything changed."""
        fingerprint = self.identities.fingerprint()
        if fingerprint == self._seen:
            return False
        stored = self.identities.load()
        self._seen = fingerprint
        self.holder.swap(stored)
        return True

    def start(self) -> None:
        self.poll()  # the first read fails loudly (serve reports it and exits)
        self._thread = threading.Thread(target=self._run, name="identity-follow",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
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
