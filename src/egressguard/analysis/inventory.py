"""The policy's rules flattened in the engine's evaluation order (semantics §4).

The engine numbers application and network rules separately, collections by ascending
priority (a stable sort, so equal priorities keep file order), rules in file order, and
the lowest number that applies wins. The analyser reasons about the same order, so it
builds it the same way (`engine.snapshot.Snapshot._compile_*_rules`) but keeps the
patterns as text, which is what subsumption and overlap work on. Each rule keeps the
identities it applies to (`policy.rules.scope`: empty for every caller, `NOBODY` for a
rule whose lists share no name, which the engine drops and the analyser leaves out).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from egressguard.engine import References
from egressguard.policy.model import Action, Policy, is_service_tag
from egressguard.policy.rules import APPLIES_TO_NOBODY, scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AppRule:
    order: int
    rule_id: str
    action: Action
    patterns: tuple[str, ...]  # targets plus the expansion of known FQDN tags
    specs: tuple[tuple[str, int | None], ...]
    sources: tuple[Network, ...]
    report_only: bool
    unknown_tags: tuple[str, ...] = ()
    identities: frozenset[str] = frozenset()  # empty: every caller

    @property
    def nobody(self) -> bool:
        return self.identities == APPLIES_TO_NOBODY


@dataclass(frozen=True)
class Destination:
    """A network rule destination: `any` (`*`), `net` (IP/CIDR), `tag` or `host` pattern."""

    kind: str
    text: str

    @property
    def network(self) -> Network:
        return ipaddress.ip_network(self.text, strict=False)


@dataclass(frozen=True)
class NetRule:
    order: int
    rule_id: str
    action: Action
    destinations: tuple[Destination, ...]
    protocols: frozenset[str]
    ports: tuple[tuple[int, int], ...]
    sources: tuple[Network, ...]
    report_only: bool
    names: bool = False  # match_resolved_names: also allows names resolving into it
    identities: frozenset[str] = frozenset()  # empty: every caller

    @property
    def nobody(self) -> bool:
        return self.identities == APPLIES_TO_NOBODY

    @property
    def all_ports(self) -> bool:
        return any(lo == 0 and hi == 65535 for lo, hi in self.ports)


def destination(text: str) -> Destination:
    if text == "*":
        return Destination("any", text)
    if is_service_tag(text):
        return Destination("tag", text)
    if text[0].isdigit() or ":" in text:
        return Destination("net", text)
    return Destination("host", text)


def app_rules(policy: Policy, refs: References) -> list[AppRule]:
    out: list[AppRule] = []
    for collection in sorted(policy.application_rule_collections, key=lambda c: c.priority):
        for rule in collection.rules:
            patterns = list(rule.targets)
            unknown = []
            for tag in rule.fqdn_tags:
                if tag in refs.fqdn_tags:
                    patterns.extend(refs.fqdn_tags[tag])
                else:
                    unknown.append(tag)
            out.append(AppRule(
                order=len(out) + 1, rule_id=f"application:{collection.name}/{rule.name}",
                action=rule.action or collection.action, patterns=tuple(patterns),
                specs=tuple((p.protocol, p.port) for p in rule.protocols),
                sources=tuple(ipaddress.ip_network(s) for s in rule.sources),
                report_only=collection.report_only, unknown_tags=tuple(unknown),
                identities=scope(collection.identities, rule.identities)))
    return out


def net_rules(policy: Policy) -> list[NetRule]:
    out: list[NetRule] = []
    for collection in sorted(policy.network_rule_collections, key=lambda c: c.priority):
        for rule in collection.rules:
            out.append(NetRule(
                order=len(out) + 1, rule_id=f"network:{collection.name}/{rule.name}",
                action=rule.action or collection.action,
                destinations=tuple(destination(d) for d in rule.destinations),
                protocols=frozenset(rule.protocols),
                ports=tuple((p.low, p.high) for p in rule.ports),
                sources=tuple(ipaddress.ip_network(s) for s in rule.sources),
                report_only=collection.report_only, names=rule.match_resolved_names,
                identities=scope(collection.identities, rule.identities)))
    return out


@dataclass(frozen=True)
class Grant:
    """A host pattern some layer allows: where it is written and on which ports."""

    rule_id: str
    pattern: str
    layer: str  # application | allowed_fqdn | network
    ports: tuple[int | None, ...]  # None = any port


def host_grants(policy: Policy, refs: References) -> list[Grant]:
    """Every allowed host pattern, in policy order: application allow rules, the allowed
    FQDN list and network allow rules with FQDN destinations."""
    grants: list[Grant] = []
    for app in app_rules(policy, refs):
        if app.action is Action.ALLOW and not app.nobody:
            app_ports = tuple(dict.fromkeys(port for _, port in app.specs))
            grants.extend(Grant(app.rule_id, p, "application", app_ports)
                          for p in app.patterns)
    grants.extend(Grant(f"allowed_fqdn:{p}", p, "allowed_fqdn", (80, 443))
                  for p in policy.allowed_fqdn_list)
    for net in net_rules(policy):
        if net.action is Action.ALLOW and not net.nobody:
            ports: tuple[int | None, ...] = (None,) if net.all_ports else tuple(
                sorted({lo for lo, _ in net.ports}))
            grants.extend(Grant(net.rule_id, d.text, "network", ports)
                          for d in net.destinations if d.kind == "host")
    return grants


def callers(apps: list[AppRule], nets: list[NetRule]) -> list[str | None]:
    """One identity for each set of callers every rule treats alike (the rules' scopes
    cut the identities into such classes), after None: a caller no scope names (every
    rule without `identities` applies to it, no scoped one does)."""
    classes: dict[frozenset[int], str] = {}
    rules: list[AppRule | NetRule] = [*apps, *nets]
    scopes = [r.identities for r in rules if r.identities and not r.nobody]
    for name in sorted(set().union(*scopes)):
        classes.setdefault(frozenset(i for i, s in enumerate(scopes) if name in s), name)
    return [None, *classes.values()]
