"""Policy -> `Ruleset`: the engine's network layer for `flow` requests, as nft chains.

What the engine does for a flow to an IP address (semantics §4, steps 2, 4 and 7), and
how each part appears in the kernel:

* report-only policy: every denial is only recorded -> nothing is dropped (logged instead);
  report-only collections never change what is enforced -> they are left out;
* address guard: a special destination (loopback, private, link-local, ...) is denied
  unless *some* enforced allow rule naming a literal CIDR (not `/0`) that contains it
  applies -> chain `guard`: those rules `goto rules`, everything else drops;
* network rules: collections by ascending priority, rules in order, first match wins ->
  chain `rules`, one accept/drop per rule conjunction in the same order;
* default: drop while restricted, accept otherwise -> the last rule of `rules`.

FQDN destinations are never matched against an IP flow by the engine, so leaving them out
is exact; `Options.resolve` adds their current addresses (a deliberate deviation), and
`Options.fqdn_sets` (for `firewall apply --watch`) gives each exact name its own named set
with per-element timeouts, filled with `Options.learned` (address, seconds left) and kept
fresh by the watcher as DNS answers' TTLs run out.
Infrastructure exemptions (established/related return traffic, IPv6 neighbour discovery,
the local gateway and DNS filter ports, named resolvers) come first. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from egressguard.engine import CompileError, References
from egressguard.firewall.addresses import Net, collapse, raw_destinations, special_destinations
from egressguard.firewall.model import Action, Chain, NamedSet, NftRule, Ruleset
from egressguard.policy.model import Action as PolicyAction
from egressguard.policy.model import NetworkRule, Policy, is_service_tag
from egressguard.policy.rules import scope

Resolver = Callable[[str], Sequence[str]]
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_ALL_PORTS = ((0, 65535),)
_PORTED = frozenset({"tcp", "udp"})


@dataclass(frozen=True)
class Options:
    """Deployment details the policy does not know.

    `gateway_ports`: loopback TCP/UDP ports of the local proxy and DNS filter (defaults:
    `serve`'s 3128 and `dns serve`'s 5353). `gateway_addresses`: (ip, port) of a proxy
    elsewhere. `allow_dns_to`: (ip, port) resolvers reachable over UDP and TCP.
    `exempt_uids`: users whose own traffic is not filtered (the gateway's, when it runs
    in the same namespace: it connects to whatever application rules allow).
    `allow_loopback`: accept all loopback traffic (the engine's guard refuses it).
    """

    table: str = "egressguard"
    hooks: tuple[str, ...] = ("output", "forward")
    gateway_ports: tuple[int, ...] = (3128, 5353)
    gateway_addresses: tuple[tuple[str, int], ...] = ()
    allow_dns_to: tuple[tuple[str, int], ...] = ()
    exempt_uids: tuple[int, ...] = ()
    allow_loopback: bool = False
    resolve: Resolver | None = None
    set_threshold: int = 8  # longer address lists go into named sets
    fqdn_sets: bool = False
    learned: Mapping[str, Sequence[tuple[str, int]]] = field(default_factory=dict)


def resolvable(dest: str) -> bool:
    """An FQDN destination that names one host (not `*.x` or `.x`): it can be resolved."""
    return (not is_service_tag(dest) and dest != "*" and "*" not in dest
            and not dest.startswith(".") and not (dest[0].isdigit() or ":" in dest))


def fqdn_destinations(policy: Policy) -> list[str]:
    """The exact names the enforced network rules of `policy` name, sorted."""
    return sorted({d.lower().rstrip(".") for c in policy.network_rule_collections
                   if not c.report_only for r in c.rules for d in r.destinations
                   if resolvable(d)})


def fqdn_set_name(index: int, family: int) -> str:
    return f"fqdn_{index}_v{family}"


class _Sets:
    """Named sets, one per distinct prefix list, so tags shared by rules load once."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.by_key: dict[tuple[int, tuple[Net, ...]], NamedSet] = {}

    def name_for(self, family: int, nets: tuple[Net, ...] | None, hint: str) -> str | None:
        if nets is None or len(nets) <= self.threshold:
            return None
        key = (family, nets)
        if key not in self.by_key:
            name = f"{hint}_{len(self.by_key)}_v{family}"
            self.by_key[key] = NamedSet(name, family, nets)
        return self.by_key[key].name


def _conjunctions(rule: NetworkRule) -> list[tuple[frozenset[str] | None,
                                                    tuple[tuple[int, int], ...] | None]]:
    """(protocols, ports) pairs whose union is what the rule's protocols and ports match.

    The engine checks ports only for requests that have one; an ICMP flow has none, so an
    `icmp` or `any` rule matches ICMP whatever its ports. `any` with every port matches
    every L4 protocol; with some ports, TCP and UDP on them (and ICMP).
    """
    protocols = set(rule.protocols)
    ports = tuple(sorted({(p.low, p.high) for p in rule.ports}))
    every_port = any(lo == 0 and hi == 65535 for lo, hi in ports)
    if every_port:
        return [(None, None) if "any" in protocols else (frozenset(protocols), None)]
    out: list[tuple[frozenset[str] | None, tuple[tuple[int, int], ...] | None]] = []
    ported = _PORTED if "any" in protocols else frozenset(protocols) & _PORTED
    if ported:
        out.append((ported, ports))
    if "any" in protocols or "icmp" in protocols:
        out.append((frozenset({"icmp"}), None))
    return out


def _destinations(rule: NetworkRule, rule_id: str, refs: References,
                  resolve: Resolver | None, notes: list[str], names: list[str] | None = None
                  ) -> tuple[list[Net] | None, list[Net]]:
    """(every destination prefix, or None for `*`; the explicit ones, which lift the guard).
    With `names` (DNS-learned sets), exact FQDNs are appended there instead."""
    every: list[Net] = []
    explicit: list[Net] = []
    anywhere = False
    for dest in rule.destinations:
        if dest == "*":
            anywhere = True
        elif is_service_tag(dest):
            prefixes = refs.service_tags.get(dest)
            if prefixes is None:
                raise CompileError(f"network rule {rule_id}: unknown service tag {dest!r}")
            every += [ipaddress.ip_network(p, strict=False) for p in prefixes]
        elif dest[0].isdigit() or ":" in dest:
            net = ipaddress.ip_network(dest, strict=False)
            every.append(net)
            if net.prefixlen:  # /0 is `*` spelled differently: it does not lift the guard
                explicit.append(net)
        elif names is not None and resolvable(dest):
            names.append(dest.lower().rstrip("."))
        elif resolve is not None and "*" not in dest and not dest.startswith("."):
            found = [ipaddress.ip_network(a) for a in resolve(dest)]
            every += found
            notes.append(f"{rule_id}: FQDN {dest} resolved at render time to "
                         f"{', '.join(str(n.network_address) for n in found) or 'nothing'}")
        else:
            notes.append(f"{rule_id}: FQDN destination {dest} is not enforced at L3 "
                         "(the proxy and DNS filter enforce it)")
    return (None if anywhere else every), explicit


def _raw(nets: Sequence[Net]) -> tuple[Net, ...]:
    return collapse([r for n in nets for r in raw_destinations(n)])


def _rules_for(action: Action, comment: str, rule: NetworkRule, dests: list[Net] | None,
               sets: _Sets, target: str | None = None) -> list[NftRule]:
    """The conjunctions of one policy rule (per address family and protocol group)."""
    raw = None if dests is None else _raw(dests)
    sources = collapse(ipaddress.ip_network(s) for s in rule.sources) if rule.sources \
        else None
    if raw is None and sources is None:
        families: list[int | None] = [None]
    else:
        families = [f for f in (4, 6)
                    if (raw is None or any(n.version == f for n in raw))
                    and (sources is None or any(n.version == f for n in sources))]
    out: list[NftRule] = []
    for family in families:
        daddr = None if raw is None else tuple(n for n in raw if n.version == family)
        saddr = None if sources is None else tuple(n for n in sources if n.version == family)
        d_set = sets.name_for(family, daddr, "dst") if family else None
        s_set = sets.name_for(family, saddr, "src") if family else None
        for protocols, ports in _conjunctions(rule):
            out.append(NftRule(action=action, comment=comment, family=family,
                               protocols=protocols, ports=ports, daddr=daddr, saddr=saddr,
                               daddr_set=d_set, saddr_set=s_set, target=target))
    return out


class _NameSets:
    """One pair of timeout sets (v4, v6) per resolvable name, filled with what was learned."""

    def __init__(self, policy: Policy, learned: Mapping[str, Sequence[tuple[str, int]]]
                 ) -> None:
        self.index = {name: i for i, name in enumerate(fqdn_destinations(policy))}
        self.sets: list[NamedSet] = []
        for name, i in self.index.items():
            for family in (4, 6):
                found = [(ipaddress.ip_network(a), max(1, int(t)))
                         for a, t in learned.get(name, ()) if ipaddress.ip_address(a).version
                         == family]
                self.sets.append(NamedSet(fqdn_set_name(i, family), family,
                                          tuple(n for n, _ in found), f"DNS-learned: {name}",
                                          timeouts=tuple(t for _, t in found)))

    def elements(self, name: str, family: int) -> tuple[Net, ...]:
        wanted = fqdn_set_name(self.index[name], family)
        return next(s.elements for s in self.sets if s.name == wanted)

    def rules(self, action: Action, comment: str, rule: NetworkRule, names: list[str]
              ) -> list[NftRule]:
        """Conjunctions matching the learned addresses of `names` (per family)."""
        sources = collapse(ipaddress.ip_network(s) for s in rule.sources) if rule.sources \
            else None
        out: list[NftRule] = []
        for name in dict.fromkeys(names):
            for family in (4, 6):
                if sources is not None and not any(n.version == family for n in sources):
                    continue
                saddr = None if sources is None else tuple(n for n in sources
                                                           if n.version == family)
                for protocols, ports in _conjunctions(rule):
                    out.append(NftRule(
                        action=action, comment=f"{comment} ({name})", family=family,
                        protocols=protocols, ports=ports,
                        daddr=self.elements(name, family), saddr=saddr,
                        daddr_set=fqdn_set_name(self.index[name], family)))
        return out


def _identity_sources(policy: Policy, collection: Sequence[str], rule: NetworkRule,
                      allow: bool, rule_id: str, notes: list[str]) -> NetworkRule | None:
    """A rule scoped to identities, as the kernel can see them: by the source CIDRs of
    those identities (the only method it has), intersected with the rule's own sources.
    An allow for identities without sources is left out (never wider); a deny for them
    stays a deny for every source (never narrower than the policy's intent to refuse)."""
    names = scope(collection, rule.identities)
    if not names:
        return rule
    cidrs = [ipaddress.ip_network(c) for n in sorted(names)
             if n in policy.identities and policy.identities[n].enabled
             for c in policy.identities[n].sources]
    if not cidrs:
        if allow:
            notes.append(f"{rule_id}: scoped to identities without source CIDRs, left "
                         "out (the proxy enforces it)")
            return None
        notes.append(f"{rule_id}: scoped to identities without source CIDRs: denied for "
                     "every source")
        return rule
    own = [ipaddress.ip_network(c) for c in rule.sources]
    if own:  # CIDRs nest or are disjoint: the intersection is the contained ones
        cidrs = [a for a in own if any(a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]
                                       for b in cidrs)] + \
                [b for b in cidrs if any(a.version == b.version and b.subnet_of(a)  # type: ignore[arg-type]
                                         for a in own)]
        if not cidrs:
            notes.append(f"{rule_id}: its sources and its identities' share no address, "
                         "left out")
            return None
    return rule.model_copy(update={"sources": sorted({str(c) for c in cidrs})})


def _infrastructure(options: Options, hook: str) -> list[NftRule]:
    out = [NftRule(Action.ACCEPT, "return traffic of allowed flows", established=True),
           NftRule(Action.ACCEPT, "IPv6 neighbour discovery", family=6,
                   protocols=frozenset({"icmp"}), nd=True)]
    if hook == "output":
        if options.exempt_uids:
            out.append(NftRule(Action.ACCEPT, "exempt users (the gateway itself)",
                               uids=tuple(sorted(set(options.exempt_uids)))))
        if options.allow_loopback:
            out.append(NftRule(Action.ACCEPT, "loopback (--allow-loopback)",
                               oif_loopback=True))
        elif options.gateway_ports:
            ports = tuple((p, p) for p in sorted(set(options.gateway_ports)))
            for net in _LOOPBACK:
                out.append(NftRule(Action.ACCEPT, "local gateway and DNS filter",
                                   oif_loopback=True, family=net.version,
                                   protocols=_PORTED, ports=ports, daddr=(net,)))
    for ip, port in options.gateway_addresses:
        net = ipaddress.ip_network(ip)
        out.append(NftRule(Action.ACCEPT, f"gateway {ip} port {port}", family=net.version,
                           protocols=frozenset({"tcp"}), ports=((port, port),), daddr=(net,)))
    for ip, port in options.allow_dns_to:
        net = ipaddress.ip_network(ip)
        out.append(NftRule(Action.ACCEPT, f"DNS to {ip} port {port}", family=net.version,
                           protocols=_PORTED, ports=((port, port),), daddr=(net,)))
    return out


def build_ruleset(policy: Policy, refs: References | None = None,
                  options: Options | None = None) -> Ruleset:
    """The kernel ruleset enforcing `policy`'s network layer for flows to IP addresses.

    Raises `CompileError` for an unknown service tag, like `compile_policy`.
    """
    refs = refs or References()
    options = options or Options()
    report_only = policy.report_only
    deny = Action.LOG if report_only else Action.DROP
    sets = _Sets(options.set_threshold)
    name_sets = _NameSets(policy, options.learned) if options.fqdn_sets else None
    notes: list[str] = []
    rules: list[NftRule] = []
    guard: list[NftRule] = []
    for collection in sorted(policy.network_rule_collections, key=lambda c: c.priority):
        for rule in collection.rules:
            rule_id = f"network:{collection.name}/{rule.name}"
            names: list[str] | None = [] if name_sets is not None else None
            dests, explicit = _destinations(rule, rule_id, refs, options.resolve, notes,
                                            names)
            if collection.report_only:
                notes.append(f"{rule_id}: report-only collection, not enforced")
                continue
            allow = (rule.action or collection.action) is PolicyAction.ALLOW
            scoped = _identity_sources(policy, collection.identities, rule, allow, rule_id,
                                       notes)
            if scoped is None:
                continue
            rule = scoped
            action = Action.ACCEPT if allow else deny
            if names and dests is not None:  # `*` already matches every address
                assert name_sets is not None
                rules += name_sets.rules(action, rule_id, rule, names)
            if dests is None or dests or not names:
                rules += _rules_for(action, rule_id, rule, dests, sets)
            if allow and explicit:
                guard += _rules_for(Action.GOTO, f"{rule_id} names the address", rule,
                                    explicit, sets, target="rules")
    if policy.restrict_outbound_network_access:
        rules.append(NftRule(deny, "default: outbound network access is restricted"))
    else:
        rules.append(NftRule(Action.ACCEPT, "default: outbound network access is not "
                                            "restricted"))
    guard.append(NftRule(deny, "address guard: special address not named by a rule"))
    special = special_destinations()
    entry = [NftRule(Action.GOTO, "special addresses", family=f,
                     daddr=tuple(n for n in special if n.version == f),
                     daddr_set=f"guard_v{f}", target="guard") for f in (4, 6)]
    entry.append(NftRule(Action.GOTO, "network rules", target="rules"))
    policy_action = (Action.DROP if policy.restrict_outbound_network_access
                     and not report_only else Action.ACCEPT)
    base = tuple(Chain(hook, tuple(_infrastructure(options, hook) + entry), hook=hook,
                       policy=policy_action) for hook in options.hooks)
    guard_sets = tuple(NamedSet(f"guard_v{f}", f, tuple(n for n in special if n.version == f),
                                "address guard: special-purpose destinations")
                       for f in (4, 6))
    if report_only:
        notes.insert(0, "report-only policy: would-be drops are logged and accepted")
    return Ruleset(options.table,
                   (*base, Chain("guard", tuple(guard)), Chain("rules", tuple(rules))),
                   guard_sets + tuple(sets.by_key.values())
                   + tuple(name_sets.sets if name_sets else ()), tuple(notes))
