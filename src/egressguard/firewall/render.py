"""`Ruleset` -> nft text for `nft -f`.

The file starts with `table inet T` / `delete table inet T` before the table body: `nft -f`
runs a file as one transaction, so applying replaces the previous ruleset atomically
(no instant without rules) and applying twice is the same as applying once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from egressguard.engine import References
from egressguard.firewall.addresses import Net
from egressguard.firewall.build import Options, build_ruleset
from egressguard.firewall.model import ND_TYPES, Action, NamedSet, NftRule, Ruleset
from egressguard.policy import Policy

_UNSAFE = re.compile(r'[^A-Za-z0-9 _./:*@,;=+()\[\]<>-]')
_LOG_PREFIX = '"egressguard report-only drop: "'


def _text(value: str, limit: int = 120) -> str:
    """A quoted nft string: only harmless characters (names come from policy files)."""
    return '"' + _UNSAFE.sub("?", value)[:limit] + '"'


def _net(net: Net) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen \
        else net.with_prefixlen


def _group(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _addresses(nets: tuple[Net, ...], named: str | None) -> str:
    return f"@{named}" if named else _group([_net(n) for n in nets])


def _protocols(rule: NftRule) -> list[str]:
    assert rule.protocols is not None
    names: list[str] = []
    for protocol in sorted(rule.protocols):
        if protocol != "icmp":
            names.append(protocol)
        else:
            names += {4: ["icmp"], 6: ["ipv6-icmp"]}.get(rule.family or 0,
                                                         ["icmp", "ipv6-icmp"])
    return names


def render_rule(rule: NftRule) -> str:
    parts: list[str] = []
    if rule.established:
        parts.append("ct state established,related")
    if rule.oif_loopback:
        parts.append('oifname "lo"')
    if rule.uids is not None:
        parts.append("meta skuid " + _group([str(u) for u in rule.uids]))
    ip = "ip6" if rule.family == 6 else "ip"
    if rule.saddr is not None:
        parts.append(f"{ip} saddr {_addresses(rule.saddr, rule.saddr_set)}")
    if rule.daddr is not None:
        parts.append(f"{ip} daddr {_addresses(rule.daddr, rule.daddr_set)}")
    if rule.nd:
        parts.append("icmpv6 type " + _group(list(ND_TYPES)))
    elif rule.protocols is not None:
        names = _protocols(rule)
        if rule.ports is not None:
            ports = _group([str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in rule.ports])
            parts.append(f"{names[0]} dport {ports}" if len(names) == 1
                         else f"meta l4proto {_group(names)} th dport {ports}")
        else:
            parts.append(f"meta l4proto {_group(names)}")
    if rule.counter:
        parts.append("counter")
    if rule.action is Action.GOTO:
        parts.append(f"goto {rule.target}")
    elif rule.action is Action.LOG:
        parts.append(f"log prefix {_LOG_PREFIX} accept")
    else:
        parts.append(rule.action.value)
    if rule.comment:
        parts.append(f"comment {_text(rule.comment)}")
    return " ".join(parts)


def _elements(named: NamedSet) -> list[str]:
    if named.timeouts is None:
        return [_net(n) for n in named.elements]
    return [f"{_net(n)} timeout {t}s" for n, t in zip(named.elements, named.timeouts,
                                                      strict=True)]


def render_set_update(table: str, sets: Iterable[NamedSet]) -> str:
    """Replace the elements of existing dynamic `sets` in one transaction (`nft -f`):
    packets see the old elements or the new ones, never an empty set in between."""
    lines = []
    for named in sets:
        lines.append(f"flush set inet {table} {named.name}")
        if named.elements:
            lines.append(f"add element inet {table} {named.name} {{ "
                         + ", ".join(_elements(named)) + " }")
    return "\n".join(lines) + "\n"


def render(ruleset: Ruleset) -> str:
    """The complete file for `nft -f`."""
    table = ruleset.table
    dynamic = {s.name for s in ruleset.sets if s.dynamic}
    lines = ["#!/usr/sbin/nft -f",
             "# egressguard: the policy's network rules for flows (generated; do not edit).",
             "# Application rules and FQDNs are enforced by the proxy and DNS filter; this",
             "# table drops what the network layer denies and, while restricted, everything",
             "# but the gateway, the DNS filter and the explicit network rules."]
    lines += [f"# note: {_UNSAFE.sub('?', note)}" for note in ruleset.notes]
    lines += [f"table inet {table}", f"delete table inet {table}", f"table inet {table} {{"]
    for named in ruleset.sets:
        kind = "ipv4_addr" if named.family == 4 else "ipv6_addr"
        lines += [f"\tset {named.name} {{", f"\t\ttype {kind}",
                  "\t\tflags timeout" if named.dynamic else "\t\tflags interval"]
        if named.comment:
            lines.append(f"\t\tcomment {_text(named.comment)}")
        if named.elements:
            elements = _elements(named)
            lines.append("\t\telements = {")
            for start in range(0, len(elements), 4):
                lines.append("\t\t\t" + ", ".join(elements[start:start + 4]) + ",")
            lines.append("\t\t}")
        lines.append("\t}")
    for chain in ruleset.chains:
        lines.append(f"\tchain {chain.name} {{")
        if chain.hook is not None:
            assert chain.policy is not None
            lines.append(f"\t\ttype filter hook {chain.hook} priority filter; "
                         f"policy {chain.policy.value};")
        lines += ["\t\t" + render_rule(r) for r in chain.rules
                  if r.daddr is None or r.daddr  # an empty list matches nothing, but
                  or r.daddr_set in dynamic]     # a DNS-learned set fills up later
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_ruleset(policy: Policy, refs: References | None = None, *,
                   table: str = "egressguard", gateway_ports: tuple[int, ...] = (3128, 5353),
                   allow_dns_to: tuple[tuple[str, int], ...] = (),
                   options: Options | None = None) -> str:
    """The nft ruleset for `policy` (see `build.build_ruleset`); `options` overrides the
    keyword shortcuts."""
    chosen = options or Options(table=table, gateway_ports=gateway_ports,
                                allow_dns_to=allow_dns_to)
    return render(build_ruleset(policy, refs, chosen))
