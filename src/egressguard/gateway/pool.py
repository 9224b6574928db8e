"""Idle upstream HTTP connections shared by every client, keyed by (host, port).

A parked connection is owned by the pool (it is the connection's `UpstreamOwner` while
parked), so its loss removes it here and nothing else hears of it. `take` hands one out
only for an address the caller has just decided (a connection opened for one address of
a name is never reused for another the policy now refuses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from egressguard.engine.normalize import IPAddress

if TYPE_CHECKING:
    from egressguard.gateway.upstream import Exchange, Upstream, UpstreamError, UpstreamOwner

PER_KEY = 32             # idle connections kept per (host, port)
IDLE_SECONDS = 30.0      # an idle connection older than this is closed


class Pool:
    """The shared pool; `park` / `take` / `expire` / `close_all`."""

    def __init__(self, per_key: int = PER_KEY, idle_seconds: float = IDLE_SECONDS) -> None:
        self.per_key = per_key
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple[str, int], list[Upstream]] = {}
        self._since: dict[Upstream, float] = {}

    def park(self, up: Upstream, now: float) -> None:
        """Keep an idle connection for the next request to its (host, port), or close it."""
        key = up.key
        idle = self._idle.setdefault(key, []) if key is not None else None
        if idle is None or not up.reusable or len(idle) >= self.per_key:
            up.close()
            return
        up.park(self)
        self._since[up] = now
        idle.append(up)

    def take(self, key: tuple[str, int], addresses: tuple[IPAddress, ...],
             owner: UpstreamOwner) -> Upstream | None:
        """An idle connection to `key` whose address is one of the checked `addresses`."""
        idle = self._idle.get(key)
        while idle:
            up = idle.pop()
            self._since.pop(up, None)
            if not up.serves(key, addresses):
                up.close()
                continue
            up.adopt(owner)
            return up
        return None

    def expire(self, now: float) -> None:
        for up in [u for u, since in self._since.items() if now - since > self.idle_seconds]:
            self._drop(up)
            up.close()

    def close_all(self) -> None:
        for up in list(self._since):
            self._drop(up)
            up.close()
        self._idle.clear()

    def __len__(self) -> int:
        return len(self._since)

    def _drop(self, up: Upstream) -> None:
        self._since.pop(up, None)
        idle = self._idle.get(up.key) if up.key is not None else None
        if idle is not None and up in idle:
            idle.remove(up)

    # -- UpstreamOwner, while parked ------------------------------------------------------

    def upstream_lost(self, up: Upstream) -> None:
        self._drop(up)

    def deliver(self, data: bytes, counted: int) -> None:
        return None  # a parked connection relays nothing (unsolicited bytes close it)

    def exchange_done(self, ex: Exchange, up: Upstream, reuse: bool) -> None:
        return None

    def exchange_failed(self, ex: Exchange, up: Upstream, error: UpstreamError,
                        started: bool) -> None:
        return None

    def upstream_eof(self, up: Upstream) -> None:
        return None

    def pause_reading(self, reason: str) -> None:
        return None

    def resume_reading(self, reason: str) -> None:
        return None
