"""DNS-learned addresses of FQDN network-rule destinations, each good until its TTL ends.

The kernel cannot see names, so `firewall apply --watch` resolves each exact FQDN that an
enforced network rule names and puts the addresses into that name's nft set with a
timeout no longer than the answer's TTL (capped at `max_ttl`): an address the name stops
resolving to drops out of the kernel by itself. Names are re-resolved when half of the
shortest remaining timeout has passed, so a name that still resolves never lapses. A
failed lookup keeps what is known until it expires (then the name's flows are dropped:
fail closed). Pure: the caller passes the time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Answer = tuple[str, int]  # (address, TTL seconds)


class LearnedAddresses:
    def __init__(self, max_ttl: int = 3600) -> None:
        self.max_ttl = max_ttl
        self._expires: dict[str, dict[str, float]] = {}  # name -> address -> expiry
        self._due: dict[str, float] = {}  # name -> when to look again

    def names(self) -> list[str]:
        return sorted(self._expires)

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget names no rule names any more."""
        wanted = set(names)
        for name in [n for n in self._expires if n not in wanted]:
            del self._expires[name]
            self._due.pop(name, None)

    def learn(self, name: str, answers: Sequence[Answer], now: float) -> None:
        """Record a lookup: each address is good for min(TTL, max_ttl) from `now` (an
        address no longer in the answer stays until its own timeout runs out)."""
        known = self._expires.setdefault(name, {})
        for address, ttl in answers:
            known[address] = max(known.get(address, 0.0),
                                 now + max(1, min(int(ttl), self.max_ttl)))
        self._forget_expired(name, now)
        lives = [t - now for t in known.values()]
        self._due[name] = now + max(0.5, min(lives) / 2) if lives else now + 1.0

    def failed(self, name: str, now: float) -> None:
        """A lookup that got no answer: keep what is known, try again in a second."""
        self._expires.setdefault(name, {})
        self._forget_expired(name, now)
        self._due[name] = now + 1.0

    def due(self, now: float) -> list[str]:
        """Names to look up now (never looked up, or half their time gone)."""
        return sorted(n for n in self._expires if self._due.get(n, 0.0) <= now)

    def next_due(self) -> float | None:
        return min(self._due.values()) if self._due else None

    def snapshot(self, now: float) -> dict[str, list[Answer]]:
        """name -> [(address, whole seconds left)], for `Options.learned`."""
        out: dict[str, list[Answer]] = {}
        for name, known in self._expires.items():
            out[name] = sorted((a, max(1, int(t - now))) for a, t in known.items()
                               if t > now)
        return out

    def _forget_expired(self, name: str, now: float) -> None:
        known = self._expires[name]
        for address in [a for a, t in known.items() if t <= now]:
            del known[address]
