"""Failed-credential limits (pure: the caller passes the clock).

Verifying a wrong Basic secret costs the gateway a scrypt (~5 ms, `secrets`), so a caller
sending wrong credentials is both burning CPU and guessing. `Failures` counts refused
credentials per key (a source address, an identity name) in a fixed window starting
with the key's first failure; once a key has `limit` failures in its window, further
credentials for it are refused without being verified until the window ends (the caller
answers 429 with `Retry-After`). At most `cap` keys are tracked, least recently failed
first out, so memory stays bounded whatever the number of sources an attacker cycles
through (each gateway process counts on its own, as byte budgets do). Names are counted
by a keyed hash into `NAME_BUCKETS` buckets: names the directory does not know count
exactly as known ones (a throttled name tells nothing about which names exist), and no
number of invented names can push a real one's count out.

Used from one event loop (the gateway's); no lock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import secrets
from collections import OrderedDict
from collections.abc import Hashable

from egressguard.engine.normalize import IPAddress

SOURCE_LIMIT = 10    # refused credentials per source address (IPv6: per /64) ...
NAME_LIMIT = 30      # ... per identity name, from any source ...
WINDOW_S = 60.0      # ... within this many seconds
MAX_TRACKED = 4096   # keys remembered per limiter
NAME_BUCKETS = 4096  # names share this many counters (a real name's neighbours: 1/4096)
_NAME_SALT = secrets.token_bytes(16)  # per process: collisions cannot be aimed


class Failures:
    """Failures per key within a fixed window, for at most `cap` keys."""

    def __init__(self, limit: int, window: float = WINDOW_S, cap: int = MAX_TRACKED) -> None:
        self.limit = limit
        self.window = window
        self.cap = cap
        self._seen: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def blocked(self, key: Hashable, now: float) -> float | None:
        """Seconds until `key` may be tried again, or None if it may be now."""
        entry = self._seen.get(key)
        if entry is None:
            return None
        start, count = entry
        if now - start >= self.window:
            del self._seen[key]
            return None
        return start + self.window - now if count >= self.limit else None

    def failed(self, key: Hashable, now: float) -> None:
        """Count one refused credential for `key`."""
        entry = self._seen.pop(key, None)
        if entry is None or now - entry[0] >= self.window:
            entry = (now, 0)
        self._seen[key] = (entry[0], entry[1] + 1)  # most recently failed last
        while len(self._seen) > self.cap:
            self._seen.popitem(last=False)


def source_key(source: IPAddress | None) -> object:
    """What a source is counted as: its address; an IPv6 address by its /64 (one host
    commonly holds a whole /64, and would otherwise get a fresh allowance per address)."""
    if isinstance(source, ipaddress.IPv6Address) and source.ipv4_mapped is None:
        return ipaddress.IPv6Network((int(source) >> 64 << 64, 64))
    return source


def name_key(name: str) -> int:
    """The counter a claimed identity name is counted in."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8,
                             key=_NAME_SALT).digest()
    return int.from_bytes(digest, "big") % NAME_BUCKETS


def retry_after(seconds: float) -> int:
    """Whole seconds for a `Retry-After` header (at least 1)."""
    return max(1, math.ceil(seconds))
