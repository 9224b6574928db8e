"""The policy's rules flattened in evaluation order (semantics §4), as plain values.

One flattening for every reader of the rules (the engine's compile, the kernel ruleset, the
analyser, the exporters): collections by ascending priority (a stable sort, so equal
priorities keep file order), rules in file order, application and network rules numbered
separately from 1, the lowest number that applies wins. Each rule carries its effective
action (the rule's own or its collection's), its collection's report-only switch, and its
id as a `RuleId` whose text (`application:coll/rule`) is what decisions, audit records and
analysis findings print. FQDN tags and service tags are kept as written: resolving them
needs `References` and each reader reacts differently to an unknown one (the engine
refuses, the analyser reports), so `expand_fqdn_tags` and `Destination` leave that choice
to the caller. Pure: no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from egressguard.policy.model import Action, Policy, is_service_tag
from egressguard.policy.packed import records

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NOBODY = "-nobody"  # an identity scope no caller matches (not a valid identity name)
APPLIES_TO_NOBODY = frozenset({NOBODY})
ANYONE: frozenset[str] = frozenset()  # one empty scope shared by every rule (216 bytes each)
ALL_PORTS = (0, 65535)


class RuleKind(enum.StrEnum):
    APPLICATION = "application"
    NETWORK = "network"


@dataclass(frozen=True, slots=True)
class RuleId:
    """`application:<collection>/<rule>` or `network:<collection>/<rule>`.

    `parse` splits at the last `/`, so a collection name may contain `/` but a rule name
    containing one does not read back: keep the `RuleId` value rather than re-parse text.
    """

    kind: RuleKind
    collection: str
    rule: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.collection}/{self.rule}"

    @property
    def name(self) -> str:
        """`<collection>/<rule>`, the part reasons print after "by application rule"."""
        return f"{self.collection}/{self.rule}"

    @classmethod
    def parse(cls, text: str) -> RuleId:
        """The inverse of `str()`; raises ValueError for anything else."""
        kind, sep, rest = text.partition(":")
        collection, slash, rule = rest.rpartition("/")
        if not sep or not slash or not collection or not rule or kind not in (
                RuleKind.APPLICATION.value, RuleKind.NETWORK.value):
            raise ValueError(f"not a rule id: {text!r} (expected kind:collection/rule)")
        return cls(RuleKind(kind), collection, rule)


class DestKind(enum.StrEnum):
    ANY = "any"  # `*`
    NET = "net"  # an IP address or CIDR (canonical network text)
    TAG = "tag"  # a service tag, expanded through References.service_tags
    HOST = "host"  # a host pattern (semantics §3)


@dataclass(frozen=True, slots=True)
class Destination:
    """One network-rule destination, classified once."""

    kind: DestKind
    text: str

    @classmethod
    def of(cls, text: str) -> Destination:
        """Classify a destination as the model validated it (canonical text)."""
        if text == "*":
            return cls(DestKind.ANY, text)
        if is_service_tag(text):
            return cls(DestKind.TAG, text)
        if "/" in text:  # the model writes every address as a network, `/` included
            return cls(DestKind.NET, text)
        return cls(DestKind.HOST, text)  # a name may start with a digit: `1password.com`

    @property
    def network(self) -> Network:
        """The CIDR of a `NET` destination."""
        return ipaddress.ip_network(self.text, strict=False)

    @property
    def explicit(self) -> bool:
        """A literal CIDR other than /0: it names its addresses, so it lifts the address
        guard (a /0 is `*` spelled differently and does not)."""
        return self.kind is DestKind.NET and self.network.prefixlen > 0


@dataclass(frozen=True, slots=True)
class AppRule:
    """One application rule in evaluation order."""

    order: int
    id: RuleId
    action: Action
    targets: tuple[str, ...]
    fqdn_tags: tuple[str, ...]
    specs: tuple[tuple[str, int | None], ...]  # (protocol, port or None for any port)
    sources: tuple[Network, ...]
    report_only: bool
    priority: int
    identities: frozenset[str] = frozenset()  # empty: any caller (see `scope`)

    @property
    def allow(self) -> bool:
        return self.action is Action.ALLOW


@dataclass(frozen=True, slots=True)
class NetRule:
    """One network rule in evaluation order."""

    order: int
    id: RuleId
    action: Action
    destinations: tuple[Destination, ...]
    protocols: frozenset[str]  # tcp, udp, icmp, any
    ports: tuple[tuple[int, int], ...]
    sources: tuple[Network, ...]
    report_only: bool
    priority: int
    match_resolved_names: bool = False  # also allows names resolving into it
    identities: frozenset[str] = frozenset()  # empty: any caller (see `scope`)

    @property
    def allow(self) -> bool:
        return self.action is Action.ALLOW

    @property
    def all_ports(self) -> bool:
        return ALL_PORTS in self.ports


def scope(collection: Sequence[str], rule: Sequence[str]) -> frozenset[str]:
    """The identities a rule applies to: its collection's list narrowed by its own (both
    given: those in both; one given: that one; neither: any caller, the empty set). A
    rule whose two lists share no name applies to nobody: it is kept with the
    unmatchable scope `{NOBODY}` (no identity name starts with '-') rather than widened
    to everyone."""
    if collection and rule:
        return frozenset(collection) & frozenset(rule) or APPLIES_TO_NOBODY
    return frozenset(collection or rule) if collection or rule else ANYONE


def application_rules(policy: Policy) -> tuple[AppRule, ...]:
    """Every application rule, in the order the engine tries them."""
    return tuple(iter_application_rules(policy))


def iter_application_rules(policy: Policy) -> Iterator[AppRule]:
    """`application_rules` one at a time (a big policy's compile holds one at once).
    What rules share (ports, sources, scope: the fields of a packed rule's template) is
    converted once per template and shared."""
    order = 0
    for collection in sorted(policy.application_rule_collections, key=lambda c: c.priority):
        shared: dict[int, tuple[Any, ...]] = {}  # id(template) -> its fields, converted
        for name, targets, rule in records(collection.rules):
            found = shared.get(id(rule))
            if found is None:
                found = shared[id(rule)] = (
                    rule.action or collection.action, tuple(rule.fqdn_tags),
                    tuple((p.protocol, p.port) for p in rule.protocols),
                    tuple(ipaddress.ip_network(s) for s in rule.sources),
                    scope(collection.identities, rule.identities), rule)  # `rule`: kept alive
            action, fqdn_tags, specs, sources, identities, _ = found
            order += 1
            yield AppRule(order, RuleId(RuleKind.APPLICATION, collection.name, name), action,
                          targets, fqdn_tags, specs, sources, collection.report_only,
                          collection.priority, identities)


def network_rules(policy: Policy) -> tuple[NetRule, ...]:
    """Every network rule, in the order the engine tries them."""
    return tuple(iter_network_rules(policy))


def iter_network_rules(policy: Policy) -> Iterator[NetRule]:
    """`network_rules` one at a time, sharing what rules share (`iter_application_rules`)."""
    order = 0
    for collection in sorted(policy.network_rule_collections, key=lambda c: c.priority):
        shared: dict[int, tuple[Any, ...]] = {}
        for name, destinations, rule in records(collection.rules):
            found = shared.get(id(rule))
            if found is None:
                found = shared[id(rule)] = (
                    rule.action or collection.action, frozenset(rule.protocols),
                    tuple((p.low, p.high) for p in rule.ports),
                    tuple(ipaddress.ip_network(s) for s in rule.sources),
                    rule.match_resolved_names,
                    scope(collection.identities, rule.identities), rule)
            action, protocols, ports, sources, names, identities, _ = found
            order += 1
            yield NetRule(order, RuleId(RuleKind.NETWORK, collection.name, name), action,
                          tuple(Destination.of(d) for d in destinations), protocols, ports,
                          sources, collection.report_only, collection.priority, names,
                          identities)


def expand_fqdn_tags(rule: AppRule, fqdn_tags: Mapping[str, Sequence[str]]
                     ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the rule's targets followed by its known tags' patterns, the unknown tags).

    Tag patterns come from catalogs, not from the validated policy: callers that match
    them canonicalise them (`validate_host_pattern`) as the engine does.
    """
    patterns = list(rule.targets)
    unknown: list[str] = []
    for tag in rule.fqdn_tags:
        if tag in fqdn_tags:
            patterns.extend(fqdn_tags[tag])
        else:
            unknown.append(tag)
    return tuple(patterns), tuple(unknown)


_ACCOUNT_ID = re.compile(
    r"/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.storage/"
    r"storageaccounts/(?P<name>[a-z0-9]{3,24})")


@dataclass(frozen=True, slots=True)
class StorageEntries:
    """What a policy's service endpoint policies list (semantics §6), parsed once for
    every reader (the engine, the exporters): accounts named directly (by name or by
    resource id), subscription and resource-group scopes, and aliases."""

    names: frozenset[str]
    prefixes: tuple[str, ...]  # lower-case scope ids ending in '/'
    aliases: tuple[tuple[str, str], ...]  # (service endpoint policy name, alias)

    def accounts(self, inventory: Mapping[str, str]) -> frozenset[str]:
        """The listed names, and the accounts of `inventory` (name -> resource id) that
        a subscription or resource-group scope contains."""
        scoped = {name.lower() for name, rid in inventory.items()
                  if any(rid.lower().rstrip("/").startswith(p) for p in self.prefixes)}
        return self.names | scoped


def storage_entries(policy: Policy) -> StorageEntries:
    """The policy's service endpoint policy entries, classified."""
    names: set[str] = set()
    prefixes: list[str] = []
    aliases: list[tuple[str, str]] = []
    for sep in policy.service_endpoint_policies:
        for resource in sep.resources:
            text = resource.strip().lower().rstrip("/")
            found = _ACCOUNT_ID.fullmatch(text)
            if found:
                names.add(found.group("name"))
            elif text.startswith("/subscriptions/"):
                prefixes.append(text + "/")
            else:
                names.add(text)
        aliases += [(sep.name, alias) for alias in sep.aliases]
    return StorageEntries(frozenset(names), tuple(prefixes), tuple(aliases))
