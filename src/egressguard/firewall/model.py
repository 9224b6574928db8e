"""The intermediate ruleset model: what both the nft text and the evaluator are made of.

`build.build_ruleset` turns a policy into a `Ruleset`; `render.render` prints it for
`nft -f`; `evaluate` walks it the way the kernel walks the chains (rules in order, the
first verdict ends the walk, `goto` continues in another chain and does not come back).
Keeping one model is what lets the tests prove the kernel agrees with the engine.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from egressguard.firewall.addresses import Net

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
PROTOCOLS = ("tcp", "udp", "icmp")  # the engine's flow protocols
ND_TYPES = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
            "nd-neighbor-advert")


class Action(enum.StrEnum):
    ACCEPT = "accept"
    DROP = "drop"
    GOTO = "goto"
    LOG = "log"  # report-only: log the would-be drop, then accept


@dataclass(frozen=True, slots=True)
class NftRule:
    """One nft rule: a conjunction of matches and an action. Empty fields match all.

    `protocols` are the engine's names (`icmp` is ICMPv6 for IPv6 packets); `ports` apply
    only with port-bearing `protocols` (tcp, udp). `family` is 4 or 6 when the rule
    names addresses. `daddr_set`/`saddr_set` name an nft set holding the prefixes (for
    long lists); the prefixes are always in `daddr`/`saddr` too.
    """

    action: Action
    comment: str = ""
    family: int | None = None
    protocols: frozenset[str] | None = None
    ports: tuple[tuple[int, int], ...] | None = None
    daddr: tuple[Net, ...] | None = None
    saddr: tuple[Net, ...] | None = None
    daddr_set: str | None = None
    saddr_set: str | None = None
    target: str | None = None  # the chain of a goto
    established: bool = False  # ct state established,related
    oif_loopback: bool = False
    uids: tuple[int, ...] | None = None
    nd: bool = False  # ICMPv6 neighbour discovery (IPv6 cannot work without it)
    counter: bool = True


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[NftRule, ...]
    hook: str | None = None  # output / forward for base chains
    policy: Action | None = None


@dataclass(frozen=True, slots=True)
class NamedSet:
    """A named address set. With `timeouts` (seconds, one per element) it is a dynamic
    set whose elements expire (`flags timeout`): DNS-learned addresses of one name."""

    name: str
    family: int
    elements: tuple[Net, ...]
    comment: str = ""
    timeouts: tuple[int, ...] | None = None

    @property
    def dynamic(self) -> bool:
        return self.timeouts is not None


@dataclass(frozen=True, slots=True)
class Ruleset:
    table: str
    chains: tuple[Chain, ...]
    sets: tuple[NamedSet, ...] = ()
    notes: tuple[str, ...] = ()  # comments at the top of the file (FQDN rules skipped...)

    def chain(self, name: str) -> Chain:
        for chain in self.chains:
            if chain.name == name:
                return chain
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a flow, as a hook sees it."""

    protocol: str  # tcp, udp, icmp
    daddr: IP
    dport: int | None = None
    saddr: IP | None = None
    established: bool = False
    loopback: bool = False
    uid: int | None = None
    nd: bool = False

    @property
    def family(self) -> int:
        return self.daddr.version


def matches(rule: NftRule, packet: Packet) -> bool:
    """Whether every match of `rule` holds for `packet` (the kernel's rule semantics)."""
    if rule.established and not packet.established:
        return False
    if rule.nd and not (packet.nd and packet.protocol == "icmp" and packet.family == 6):
        return False
    if rule.oif_loopback and not packet.loopback:
        return False
    if rule.uids is not None and packet.uid not in rule.uids:
        return False
    if rule.family is not None and rule.family != packet.family:
        return False
    if rule.protocols is not None and packet.protocol not in rule.protocols:
        return False
    if rule.ports is not None and (packet.dport is None or not any(
            lo <= packet.dport <= hi for lo, hi in rule.ports)):
        return False
    if rule.daddr is not None and not any(packet.daddr in n for n in rule.daddr):
        return False
    return rule.saddr is None or (packet.saddr is not None
                                  and any(packet.saddr in n for n in rule.saddr))


def evaluate(ruleset: Ruleset, hook: str, packet: Packet) -> tuple[Action, NftRule | None]:
    """The verdict the kernel gives `packet` at `hook` (ACCEPT, DROP, or LOG: accepted
    and logged as a would-be drop), and the rule that gave it (None: the chain policy)."""
    base = next(c for c in ruleset.chains if c.hook == hook)
    chain, index, returns = base, 0, 0
    while True:
        if index >= len(chain.rules):  # end of a goto chain: back to the base policy
            assert base.policy is not None
            return base.policy, None
        rule = chain.rules[index]
        index += 1
        if not matches(rule, packet):
            continue
        if rule.action is Action.GOTO:
            assert rule.target is not None
            chain, index, returns = ruleset.chain(rule.target), 0, returns + 1
            if returns > 64:
                raise RuntimeError("goto loop")
            continue
        return rule.action, rule


__all__ = ["ND_TYPES", "PROTOCOLS", "Action", "Chain", "NamedSet", "NftRule", "Packet",
           "Ruleset", "evaluate", "matches"]
