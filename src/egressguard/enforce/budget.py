"""Byte budgets (`budgets:` in the policy): how many bytes may go to a destination, per
identity, within a window. Pure accounting: no I/O, no clock (callers pass `now`, a
monotonic time), so every rule below is a table test.

How a budget is counted, exactly:

* A budget applies to a connection (a CONNECT tunnel, or one HTTP exchange) whose
  destination host matches one of its `destinations` (host patterns as the engine matches
  them, or CIDRs for an address connected to) and, when it lists `identities`, whose
  identity is one of them.
* Its allowance is kept per key: the budget, plus the destination host and/or the identity
  as `per` says. A key's window is fixed: it starts with the key's first byte and resets
  `window` seconds later (`Usage.resets_at`), when the count starts again from zero.
* `Meter.charge` is called with every chunk before it is relayed. A chunk that would take
  an enforced budget beyond `max_bytes` is not relayed: the connection is cut, and the key
  is marked exhausted, so `Ledger.open` refuses later connections of that key until the
  window resets. So no more than `max_bytes` ever reaches the destination per window.
* A `report_only` budget relays everything; crossing it is reported once per window (and a
  later connection while it is over is reported, not refused).
* The table of keys is bounded (`MAX_KEYS`): expired keys are dropped to make room, and a
  new key that still finds no room is treated as exhausted (fail closed), never as fresh.

Budgets are counted by each gateway process (a fleet of N gateways lets through at most N
times a budget to a client that spreads its connections over all of them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from egressguard.engine.hostindex import HostIndex
from egressguard.engine.normalize import IPAddress
from egressguard.policy.model import Budget

MAX_KEYS = 100_000   # budget keys held at once (about 100 bytes each)

Key = tuple[str, str, str]   # (budget name, destination or "", identity or "")


class Usage:
    """One key's window: bytes counted since `started`."""

    __slots__ = ("exhausted", "reported", "resets_at", "used")

    def __init__(self, now: float, window: float) -> None:
        self.resets_at = now + window
        self.used = 0
        self.exhausted = False   # an enforced charge was refused: refuse until reset
        self.reported = False    # a report-only crossing was reported in this window

    def roll(self, now: float, window: float) -> None:
        """Start a new window when this one has ended."""
        if now >= self.resets_at:
            self.resets_at = now + window
            self.used = 0
            self.exhausted = self.reported = False


@dataclass(frozen=True, slots=True)
class Overrun:
    """A budget a connection is beyond (or would be): why, for the audit record."""

    budget: Budget
    key: Key
    used: int            # bytes counted in the window, this chunk included
    retry_after: float   # seconds until the key's window resets
    refused: bool        # at open (a later connection), not in the middle of one

    @property
    def enforced(self) -> bool:
        return not self.budget.report_only

    @property
    def rule(self) -> str:
        return f"budget:{self.budget.name}"

    @property
    def reason(self) -> str:
        b = self.budget
        what = {"up": "sent to", "down": "received from", "both": "exchanged with"}[
            b.direction]
        target = self.key[1] or ", ".join(b.destinations[:3])
        who = f" by {self.key[2]}" if self.key[2] else ""
        if self.refused:
            return (f"byte budget {b.name!r} used up: {b.max_bytes} bytes {what} {target}"
                    f"{who} per {b.window:g} s; resets in {self.retry_after:.0f} s")
        return (f"byte budget {b.name!r} exceeded: {self.used} bytes {what} {target}{who} "
                f"within {b.window:g} s (budget {b.max_bytes})")


class Meter:
    """The budgets one connection counts against (from `Ledger.open`)."""

    __slots__ = ("_entries",)

    def __init__(self, entries: list[tuple[Budget, Key, Usage]]) -> None:
        self._entries = entries   # shared with the ledger: every connection of a key
        # counts into the same `Usage`

    def charge(self, up: int, down: int, now: float) -> Overrun | None:
        """Count a chunk about to be relayed; an enforced `Overrun` means: do not relay it,
        cut the connection. A report-only one is returned once per window (relay it)."""
        entries = self._entries
        for budget, key, usage in entries:
            usage.roll(now, budget.window)
            n = _counted(budget, up, down)
            if n and not budget.report_only and (
                    usage.exhausted or usage.used + n > budget.max_bytes):
                usage.exhausted = True
                return Overrun(budget, key, usage.used + n, usage.resets_at - now, False)
        crossed: Overrun | None = None
        for budget, key, usage in entries:
            n = _counted(budget, up, down)
            if not n:
                continue
            usage.used += n
            if usage.used > budget.max_bytes and not usage.reported and crossed is None:
                usage.reported = True
                crossed = Overrun(budget, key, usage.used, usage.resets_at - now, False)
        return crossed


def _counted(budget: Budget, up: int, down: int) -> int:
    direction = budget.direction
    return up if direction == "up" else down if direction == "down" else up + down


class Ledger:
    """Every key's usage under one set of budgets; `rebind` carries the usage of budgets
    that did not change over a policy swap (a reload must not reset an allowance)."""

    def __init__(self, budgets: Sequence[Budget] = (), max_keys: int = MAX_KEYS) -> None:
        self.budgets = tuple(budgets)
        self.max_keys = max_keys
        self._usage: dict[Key, Usage] = {}
        # Budgets by position (a policy model is not hashable).
        self._names: HostIndex[int] = HostIndex()
        self._networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]] = []
        for i, budget in enumerate(self.budgets):
            for destination in budget.destinations:
                if destination == "*" or not _is_network(destination):
                    self._names.add(destination, i)
                else:
                    self._networks.append((ipaddress.ip_network(destination), i))

    def __bool__(self) -> bool:
        return bool(self.budgets)

    def rebind(self, budgets: Sequence[Budget]) -> Ledger:
        """A ledger for `budgets` keeping the usage of each budget that is unchanged."""
        fresh = Ledger(budgets, self.max_keys)
        kept = {b.name for b in fresh.budgets if b in self.budgets}
        fresh._usage = {k: u for k, u in self._usage.items() if k[0] in kept}
        return fresh

    def applicable(self, host: str, addresses: Sequence[IPAddress],
                   identity: str) -> list[Budget]:
        """The budgets a connection to `host` (normalised name or IP text), to be made to
        one of `addresses`, of `identity` counts against, in policy order (a CIDR budget
        applies when any of the addresses may be the one connected to)."""
        found = set(self._names.matches(host))
        for address in addresses:
            found.update(i for net, i in self._networks if address in net)
        budgets = self.budgets
        return [budgets[i] for i in sorted(found)
                if not budgets[i].identities or identity in budgets[i].identities]

    def open(self, host: str, addresses: Sequence[IPAddress], identity: str,
             now: float) -> tuple[Meter | None, Overrun | None]:
        """The meter of a new connection (None: no budget applies) and, when a budget
        is used up, why: an enforced `Overrun` means refuse the connection; a
        report-only one means record it and go on."""
        if not self.budgets:
            return None, None
        entries: list[tuple[Budget, Key, Usage]] = []
        over: Overrun | None = None
        for budget in self.applicable(host, addresses, identity):
            key = (budget.name, host if "destination" in budget.per else "",
                   identity if "identity" in budget.per else "")
            usage = self._usage.get(key)
            if usage is None:
                usage = Usage(now, budget.window)
                if self._room(now):
                    self._usage[key] = usage
                else:
                    usage.exhausted = True   # no room to count it: fail closed
            else:
                usage.roll(now, budget.window)
            entries.append((budget, key, usage))
            full = usage.exhausted or usage.used >= budget.max_bytes
            if full and (over is None or (budget.report_only is False and not over.enforced)):
                over = Overrun(budget, key, usage.used, usage.resets_at - now, True)
        if not entries:
            return None, None
        return Meter(entries), over

    def _room(self, now: float) -> bool:
        if len(self._usage) < self.max_keys:
            return True
        self._usage = {k: u for k, u in self._usage.items() if u.resets_at > now}
        return len(self._usage) < self.max_keys

    def usage(self) -> Iterable[tuple[Key, int, float]]:
        """(key, bytes used, resets at) for every key held (tests, status pages)."""
        return ((k, u.used, u.resets_at) for k, u in self._usage.items())


def _is_network(destination: str) -> bool:
    try:
        ipaddress.ip_network(destination)
    except ValueError:
        return False
    return True
