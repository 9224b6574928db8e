"""Policy -> CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML.

Cilium's egress rules are a union of allows with `egressDeny` taking precedence, not an
ordered list, so the translation keeps egressguard's first-match verdicts only from below:

* allows: `toFQDNs` for names (with the DNS rule that lets the Cilium DNS proxy see and
  answer exactly those lookups), `toCIDRSet` for addresses, `toPorts` for ports;
* address denies (and the address guard) become `egressDeny` on CIDRs: they then win over
  every allow, which can only deny more; the guard has a hole (`except`) only for a CIDR
  an any-protocol, any-port rule names (a narrower rule would open it for every allow);
* name denies have no Cilium form (`egressDeny` takes no FQDNs): every later allow they
  may shadow is left out, and an unrestricted policy falls back to deny by default;
* a rule scoped to sources is written under the endpoint selector of the identity the
  caller maps the source CIDR to; an unmapped source leaves an allow out.

Pattern translation (Cilium's `*` is one label, `**.` one or more):
`a.b.com` -> matchName; `.b.com` -> matchName `b.com` + matchPattern `**.b.com`;
`*.b.com` -> `**.b.com`; `md-*.b.com` -> `md-*.b.com` (a glob within one label); `*` -> `*`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from egressguard.engine import References
from egressguard.export.base import (
    STORAGE_PATTERNS,
    Export,
    ExportError,
    Gaps,
    Network,
    canonical,
    dump_documents,
    for_everyone,
    header,
    may_overlap,
    policy_wide_gaps,
    special_networks,
)
from egressguard.policy.model import Policy
from egressguard.policy.rules import (
    AppRule,
    DestKind,
    NetRule,
    application_rules,
    expand_fqdn_tags,
    network_rules,
)

KUBE_DNS = {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}
_PROTO = {"tcp": "TCP", "udp": "UDP", "any": "ANY"}
_EVERYWHERE = ["0.0.0.0/0", "::/0"]


def fqdn_selectors(pattern: str) -> list[dict[str, str]] | None:
    """Cilium FQDN selectors matching exactly the names `pattern` matches (None for an IP
    literal, which is an address)."""
    if pattern == "*":
        return [{"matchPattern": "*"}]
    if pattern.startswith("*."):
        return [{"matchPattern": "**." + pattern[2:]}]
    if pattern.startswith("."):
        return [{"matchName": pattern[1:]}, {"matchPattern": "**" + pattern}]
    if "*" in pattern:
        return [{"matchPattern": pattern}]
    if pattern[0].isdigit() or ":" in pattern:
        return None
    return [{"matchName": pattern}]


def port_list(ranges: list[tuple[int, int]], protocols: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for protocol in protocols:
        for lo, hi in ranges:
            entry: dict[str, Any] = {"port": str(lo), "protocol": protocol}
            if hi != lo:
                entry["endPort"] = hi
            out.append(entry)
    return out


@dataclass
class _Policy:
    selector: dict[str, Any]
    egress: list[dict[str, Any]] = field(default_factory=list)
    deny: list[dict[str, Any]] = field(default_factory=list)
    names: list[dict[str, str]] = field(default_factory=list)


class _Builder:
    def __init__(self, identities: Mapping[str, Mapping[str, str]], gaps: Gaps) -> None:
        self.gaps = gaps
        self.identities = {str(ipaddress.ip_network(k, strict=False)): dict(v)
                           for k, v in identities.items()}
        self.common = _Policy({})
        self.scoped: dict[str, _Policy] = {}
        self.poisoned: list[str] = []

    def targets(self, sources: tuple[Network, ...], allow: bool, subject: object
                ) -> list[_Policy]:
        if not sources:
            return [self.common]
        out = []
        for source in sources:
            labels = self.identities.get(str(source))
            if labels is None:
                if allow:
                    self.gaps.add(subject, f"source {source} has no identity mapping "
                                           "(--identity): left out for it")
                    continue
                self.gaps.add(subject, f"source {source} has no identity mapping: the "
                                       "deny applies to every endpoint")
                return [self.common]
            key = str(source)
            if key not in self.scoped:
                self.scoped[key] = _Policy({"matchLabels": labels})
            out.append(self.scoped[key])
        return out

    def shadowed(self, patterns: list[str], subject: object) -> bool:
        if self.poisoned and patterns and may_overlap(self.poisoned, patterns):
            self.gaps.add(subject, "left out: an earlier name deny (no Cilium form) may "
                                   "cover it")
            return True
        return False

    def allow_names(self, patterns: list[str], to_ports: list[dict[str, Any]],
                    sources: tuple[Network, ...], subject: object) -> None:
        selectors: list[dict[str, str]] = []
        cidrs: list[str] = []
        for pattern in patterns:
            found = fqdn_selectors(pattern)
            if found is None:
                cidrs.append(str(ipaddress.ip_network(pattern)))
            else:
                selectors += [s for s in found if s not in selectors]
        for target in self.targets(sources, True, subject):
            ports = [{"ports": to_ports}] if to_ports else []
            if selectors:
                target.egress.append({"toFQDNs": selectors, **(
                    {"toPorts": ports} if ports else {})})
                target.names += [s for s in selectors if s not in target.names]
            if cidrs:
                target.egress.append({"toCIDRSet": [{"cidr": c} for c in cidrs], **(
                    {"toPorts": ports} if ports else {})})


def _app(b: _Builder, rule: AppRule, refs: References) -> None:
    patterns, unknown = expand_fqdn_tags(rule, refs.fqdn_tags)
    if unknown:
        raise ExportError(f"application rule {rule.id}: unknown FQDN tag {unknown[0]!r}")
    names = [canonical(p) for p in patterns]
    if not rule.allow:
        b.gaps.add(rule.id, "name deny has no Cilium form: later allows it may cover are "
                            "left out")
        b.poisoned += names
        return
    if b.shadowed(names, rule.id):
        return
    if any(port is None for _, port in rule.specs):
        ports = port_list([(1, 65535)], ["TCP"])
    else:
        ports = port_list(sorted({(p, p) for _, p in rule.specs if p is not None}), ["TCP"])
    b.allow_names(names, ports, rule.sources, rule.id)


def _net_ports(rule: NetRule, b: _Builder, allow: bool) -> list[dict[str, Any]] | None:
    """toPorts for the rule; None: every protocol and port."""
    protocols = set(rule.protocols)
    if "any" in protocols and rule.all_ports:
        return None
    if "icmp" in protocols or "any" in protocols:
        if not allow:
            return None  # a wider deny: every protocol
        if "icmp" in protocols:
            b.gaps.add(rule.id, "ICMP left out (no port form)")
    named = sorted(_PROTO[p] for p in protocols if p in _PROTO)
    ranges = [(1, 65535)] if rule.all_ports else [(max(lo, 1), hi) for lo, hi in rule.ports
                                                  if hi >= 1]
    return port_list(ranges, named)


def _net(b: _Builder, rule: NetRule, refs: References, explicit: list[Network]) -> None:
    cidrs: list[str] = []
    hosts: list[str] = []
    for dest in rule.destinations:
        if dest.kind is DestKind.ANY:
            cidrs += _EVERYWHERE
        elif dest.kind is DestKind.NET:
            cidrs.append(dest.text)
            if rule.allow and dest.explicit and _special(dest.network):
                # The engine lifts the guard only for flows the naming rule applies to;
                # an `egressDeny` hole would open it for every allow, so only a rule
                # that applies to everything may make one.
                if not rule.sources and "any" in rule.protocols and rule.all_ports:
                    explicit.append(dest.network)
                else:
                    b.gaps.add(rule.id, f"{dest.text} is in the address guard's ranges and "
                                        "the rule is limited to some protocols, ports or "
                                        "sources: Cilium keeps it denied")
        elif dest.kind is DestKind.TAG:
            if dest.text not in refs.service_tags:
                raise ExportError(f"network rule {rule.id}: unknown service tag {dest.text!r}")
            cidrs += [str(ipaddress.ip_network(p, strict=False))
                      for p in refs.service_tags[dest.text]]
        else:
            hosts.append(dest.text)
    ports = _net_ports(rule, b, rule.allow)
    if ports == []:
        return
    to_ports = {} if ports is None else {"toPorts": [{"ports": ports}]}
    if not rule.allow:
        if hosts:
            b.gaps.add(rule.id, "FQDN deny has no Cilium form: later allows it may cover "
                                "are left out")
            b.poisoned += hosts
        if cidrs:
            for target in b.targets(rule.sources, False, rule.id):
                target.deny.append({"toCIDRSet": [{"cidr": c} for c in cidrs], **to_ports})
        return
    if hosts and not b.shadowed(hosts, rule.id):
        b.allow_names(hosts, ports or [], rule.sources, rule.id)
    if cidrs:
        if rule.destinations and any(d.kind is DestKind.ANY for d in rule.destinations) \
                and b.shadowed(["*"], rule.id):
            return
        for target in b.targets(rule.sources, True, rule.id):
            target.egress.append({"toCIDRSet": [{"cidr": c} for c in cidrs], **to_ports})


def _special(net: Network) -> bool:
    return any(net.overlaps(s) for s in special_networks()
               if s.version == net.version)


def _guard(explicit: list[Network]) -> dict[str, Any]:
    entries = []
    for special in special_networks():
        same = [n for n in explicit if n.version == special.version]
        if any(special.subnet_of(n) for n in same):  # type: ignore[arg-type]
            continue
        inside = sorted(str(n) for n in same if n.subnet_of(special))  # type: ignore[arg-type]
        entries.append({"cidr": str(special), **({"except": inside} if inside else {})})
    return {"toCIDRSet": entries}


def export_cilium(policy: Policy, refs: References | None = None, source: str = "",
                  namespace: str | None = None,
                  identities: Mapping[str, Mapping[str, str]] | None = None,
                  dns_selector: Mapping[str, str] | None = None,
                  name: str = "egressguard") -> Export:
    """Cilium policies for `policy` (namespaced with `namespace`, else clusterwide)."""
    refs = refs or References()
    gaps = Gaps()
    policy_wide_gaps(policy, "cilium", gaps)
    b = _Builder(identities or {}, gaps)
    explicit: list[Network] = []
    for rule in for_everyone(network_rules(policy), gaps):
        if not rule.report_only:
            _net(b, rule, refs, explicit)
    if policy.service_endpoint_policies:
        gaps.add("service endpoint policies", "no Cilium form: allows of storage endpoints "
                                              "are left out")
        b.poisoned += list(STORAGE_PATTERNS)
    for app in for_everyone(application_rules(policy), gaps):
        if not app.report_only:
            _app(b, app, refs)
    if policy.restrict_outbound_network_access:
        kept = [p for p in policy.allowed_fqdn_list if not b.shadowed([p], "allowed_fqdn_list")]
        if kept:
            b.allow_names(kept, port_list([(80, 80), (443, 443)], ["TCP"]), (),
                          "allowed_fqdn_list")
    elif b.poisoned:
        gaps.add("default", "unrestricted default allow left out (it would override the "
                            "name denies): exported with deny by default")
    else:
        b.common.egress.append({"toCIDRSet": [{"cidr": c} for c in _EVERYWHERE]})
        b.common.names.append({"matchPattern": "*"})
    dns = dict(dns_selector or KUBE_DNS)
    kind = "CiliumNetworkPolicy" if namespace else "CiliumClusterwideNetworkPolicy"
    docs = []
    for suffix, pol in [("", b.common), *((f"-{i}", p) for i, p in enumerate(
            b.scoped.values(), 1))]:
        egress = list(pol.egress)
        if pol.names:
            egress.insert(0, {"toEndpoints": [{"matchLabels": dns}], "toPorts": [{
                "ports": [{"port": "53", "protocol": "ANY"}],
                "rules": {"dns": pol.names}}]})
        spec: dict[str, Any] = {"endpointSelector": pol.selector, "egress": egress}
        deny = ([_guard(explicit)] if pol is b.common else []) + pol.deny
        if deny:
            spec["egressDeny"] = deny
        meta: dict[str, Any] = {"name": name + suffix}
        if namespace:
            meta["namespace"] = namespace
        docs.append({"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta,
                     "spec": spec})
    warnings = tuple(gaps.items)
    text = header("#", "cilium", source, warnings) + dump_documents(docs)
    return Export("cilium", text, warnings)
