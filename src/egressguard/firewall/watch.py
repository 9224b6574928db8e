"""`firewall apply --watch`: keep the kernel ruleset equal to the policy in force.

On every policy swap (the file changed, the store cluster got a new version) the whole
table is rebuilt and loaded with one `nft -f` (atomic: the old ruleset or the new one,
never none), with the DNS-learned addresses of FQDN destinations carried over so a
re-apply does not drop flows to names that still resolve. Between applies, names are
re-resolved before their TTL runs out and only their sets are replaced (also one
transaction). A ruleset the kernel refuses is logged and the previous one stays.
One log line per apply; lookups and set refreshes log only when something fails.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from egressguard.engine import CompileError, References
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.firewall import nft
from egressguard.firewall.build import Options, build_ruleset, fqdn_destinations
from egressguard.firewall.learned import LearnedAddresses
from egressguard.firewall.model import Ruleset
from egressguard.firewall.render import render, render_set_update
from egressguard.firewall.resolve import ResolveError

log = logging.getLogger("egressguard.firewall")
Apply = Callable[[str, "str | None"], None]
Resolve = Callable[[str], list[tuple[str, int]]]


def summary(ruleset: Ruleset) -> str:
    rules = len(ruleset.chain("rules").rules) - 1
    policy = next(c.policy for c in ruleset.chains if c.hook)
    named = sum(1 for s in ruleset.sets if s.dynamic) // 2
    return (f"{rules} network rule conjunctions, default {policy}"
            + (f", {named} DNS-learned names" if named else ""))


class FirewallWatch:
    """Follow `holder` and keep the ruleset applied in `netns` (None: this namespace)."""

    def __init__(self, holder: SnapshotHolder, options: Options, resolve: Resolve, *,
                 refs: Callable[[], References] = References, netns: str | None = None,
                 apply: Apply = nft.apply,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.holder = holder
        self.options = dataclasses.replace(options, fqdn_sets=True, resolve=None)
        self.resolve = resolve
        self.refs = refs
        self.netns = netns
        self._apply = apply
        self._clock = clock
        self.learned = LearnedAddresses()
        self.applied: Active | None = None
        self.ruleset: Ruleset | None = None
        self.applies = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._unsubscribe = holder.subscribe(lambda _active: self._wake.set())

    def apply_now(self) -> bool:
        """Build and load the ruleset for the policy in force; False if it was refused."""
        active = self.holder.active
        policy = active.snapshot.policy
        names = fqdn_destinations(policy)
        self.learned.keep_only(names)
        for name in names:
            if name not in self.learned.names():
                self._look_up(name)
        try:
            ruleset = build_ruleset(policy, self.refs(), dataclasses.replace(
                self.options, learned=self.learned.snapshot(self._clock())))
            self._apply(f"# policy: {active.source} version {active.version}\n"
                        + render(ruleset), self.netns)
        except (nft.FirewallError, CompileError) as exc:
            log.error("firewall: %s version %s not applied, previous ruleset stays: %s",
                      active.source, active.version, exc)
            self.applied = active  # do not retry the same refused version
            return False
        self.applied, self.ruleset = active, ruleset
        self.applies += 1
        where = f" in netns {self.netns}" if self.netns else ""
        log.info("firewall: applied %s version %s%s: table inet %s, %s", active.source,
                 active.version, where, ruleset.table, summary(ruleset))
        return True

    def refresh(self) -> None:
        """Re-resolve names whose addresses are half-way to expiry; update their sets."""
        if self.ruleset is None or self.applied is None:
            return
        due = self.learned.due(self._clock())
        if not due:
            return
        for name in due:
            self._look_up(name)
        policy = self.applied.snapshot.policy
        fresh = build_ruleset(policy, self.refs(), dataclasses.replace(
            self.options, learned=self.learned.snapshot(self._clock())))
        sets = [s for s in fresh.sets if s.dynamic]
        try:
            self._apply(render_set_update(fresh.table, sets), self.netns)
        except nft.FirewallError as exc:
            log.error("firewall: refreshing DNS-learned addresses failed: %s", exc)
            return
        self.ruleset = fresh

    def _look_up(self, name: str) -> None:
        try:
            answers = self.resolve(name)
        except ResolveError as exc:
            log.warning("firewall: cannot resolve %s (keeping known addresses until "
                        "their TTL ends): %s", name, exc)
            self.learned.failed(name, self._clock())
            return
        self.learned.learn(name, answers, self._clock())

    def run(self) -> None:
        """Apply, then follow changes until `stop()`."""
        self.apply_now()
        while not self._stop.is_set():
            due = self.learned.next_due()
            wait = 5.0 if due is None else min(5.0, max(0.05, due - self._clock()))
            if self._wake.wait(wait):
                self._wake.clear()
                if self._stop.is_set():
                    break
                if self.holder.active is not self.applied:
                    self.apply_now()
                    continue
            try:
                self.refresh()
            except Exception:  # never let a surprise end the watch
                log.exception("firewall: refresh failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._unsubscribe()
