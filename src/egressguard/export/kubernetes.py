"""Policy -> Kubernetes `NetworkPolicy` (networking.k8s.io/v1): the L3/L4 part, plus the
"egress only to the gateway and DNS filter" policy that sends names through egressguard.

NetworkPolicy is a union of allows over CIDRs and ports, with no deny and no names:
* network allow rules become `ipBlock` peers; the address guard's ranges and every
  earlier deny's CIDRs inside a block go into its `except` (an allow inside an earlier
  deny is left out), so first-match verdicts only narrow;
* names (application rules, the allowed FQDN list, FQDN destinations) are warnings: give
  `gateway`/`dns` to emit the policy that lets pods reach only egressguard for them;
* ICMP has no NetworkPolicy protocol: an ICMP-only allow is left out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from egressguard.engine import References
from egressguard.export.base import (
    Export,
    ExportError,
    Gaps,
    Network,
    dump_documents,
    for_everyone,
    header,
    policy_wide_gaps,
    special_networks,
)
from egressguard.policy.model import Policy
from egressguard.policy.rules import DestKind, NetRule, application_rules, network_rules

_PROTO = {"tcp": ["TCP"], "udp": ["UDP"], "any": ["TCP", "UDP", "SCTP"]}


def _ports(rule: NetRule) -> list[dict[str, Any]] | None:
    """NetworkPolicy ports for the rule; None: all protocols and ports; [] nothing."""
    if "any" in rule.protocols and rule.all_ports:
        return None
    protocols = sorted({p for name in rule.protocols for p in _PROTO.get(name, [])})
    out = []
    for protocol in protocols:
        if rule.all_ports:
            out.append({"protocol": protocol})
            continue
        for lo, hi in rule.ports:
            if hi < 1:
                continue
            entry: dict[str, Any] = {"protocol": protocol, "port": max(lo, 1)}
            if hi != entry["port"]:
                entry["endPort"] = hi
            out.append(entry)
    return out


def _cidrs(rule: NetRule, refs: References) -> list[tuple[Network, bool]]:
    out: list[tuple[Network, bool]] = []
    for dest in rule.destinations:
        if dest.kind is DestKind.ANY:
            out += [(ipaddress.ip_network("0.0.0.0/0"), False),
                    (ipaddress.ip_network("::/0"), False)]
        elif dest.kind is DestKind.NET:
            out.append((dest.network, dest.explicit))
        elif dest.kind is DestKind.TAG:
            if dest.text not in refs.service_tags:
                raise ExportError(f"network rule {rule.id}: unknown service tag {dest.text!r}")
            out += [(ipaddress.ip_network(p, strict=False), False)
                    for p in refs.service_tags[dest.text]]
    return out


def _block(net: Network, explicit: bool, denied: list[Network]) -> dict[str, Any] | None:
    """The ipBlock for one allowed CIDR, or None when an earlier deny covers it."""
    same = [d for d in denied if d.version == net.version]
    if any(net.subnet_of(d) for d in same):  # type: ignore[arg-type]
        return None
    holes = [d for d in same if d.subnet_of(net) and d != net]  # type: ignore[arg-type]
    if not explicit:  # a CIDR the rule names lifts the guard inside it (spec step 2)
        holes += [s for s in special_networks() if s.version == net.version
                  and s.subnet_of(net) and s != net]  # type: ignore[arg-type]
        if any(net.subnet_of(s) for s in special_networks()  # type: ignore[arg-type]
               if s.version == net.version):
            return None
    holes = list(ipaddress.collapse_addresses(holes))  # type: ignore[type-var]
    block: dict[str, Any] = {"cidr": str(net)}
    if holes:
        block["except"] = [str(h) for h in holes]
    return block


def export_kubernetes(policy: Policy, refs: References | None = None, source: str = "",
                      namespace: str = "default",
                      identities: Mapping[str, Mapping[str, str]] | None = None,
                      gateway: Sequence[tuple[str, int]] = (),
                      dns: Sequence[tuple[str, int]] = (),
                      name: str = "egressguard") -> Export:
    refs = refs or References()
    gaps = Gaps()
    policy_wide_gaps(policy, "kubernetes", gaps)
    mapping = {str(ipaddress.ip_network(k, strict=False)): dict(v)
               for k, v in (identities or {}).items()}
    selectors: dict[str, dict[str, Any]] = {"": {}}
    egress: dict[str, list[dict[str, Any]]] = {"": []}
    denied: list[Network] = []
    name_denies = bool(policy.service_endpoint_policies)
    for rule in for_everyone(network_rules(policy), gaps):
        if rule.report_only:
            continue
        hosts = [d.text for d in rule.destinations if d.kind is DestKind.HOST]
        cidrs = _cidrs(rule, refs)
        if not rule.allow:
            denied += [n for n, _ in cidrs]  # any ports, any source: a wider deny
            if hosts:
                name_denies = True
            continue
        if hosts:
            gaps.add(rule.id, f"names {', '.join(hosts)} left out (NetworkPolicy has no "
                              "names)")
        ports = _ports(rule)
        if ports == []:
            gaps.add(rule.id, "ICMP left out (no NetworkPolicy protocol)")
            continue
        if ports is not None and "icmp" in rule.protocols:
            gaps.add(rule.id, "ICMP left out (no NetworkPolicy protocol)")
        blocks = []
        for net, explicit in cidrs:
            block = _block(net, explicit, denied)
            if block is None:
                gaps.add(rule.id, f"{net} left out: an earlier deny or the address guard "
                                  "covers it")
            else:
                blocks.append(block)
        if not blocks:
            continue
        entry: dict[str, Any] = {"to": [{"ipBlock": b} for b in blocks]}
        if ports is not None:
            entry["ports"] = ports
        keys = [""]
        if rule.sources:
            keys = []
            for src in rule.sources:
                if str(src) not in mapping:
                    gaps.add(rule.id, f"source {src} has no identity mapping (--identity): "
                                      "left out for it")
                    continue
                keys.append(str(src))
                selectors[str(src)] = {"matchLabels": mapping[str(src)]}
        for key in keys:
            egress.setdefault(key, []).append(entry)
    for app in for_everyone(application_rules(policy), gaps):
        if app.report_only:
            continue
        if app.allow:
            gaps.add(app.id, "names left out (NetworkPolicy has no names; route them "
                             "through the gateway)")
        else:
            name_denies = True
    if policy.restrict_outbound_network_access:
        if policy.allowed_fqdn_list:
            gaps.add("allowed_fqdn_list", "names left out (NetworkPolicy has no names)")
    elif name_denies:
        gaps.add("default", "unrestricted default allow left out (it would override the "
                            "name denies): exported with deny by default")
    else:
        blocks = [b for b in (_block(ipaddress.ip_network(c), False, denied)
                              for c in ("0.0.0.0/0", "::/0")) if b is not None]
        if blocks:  # an empty `to` would mean every destination
            egress[""].append({"to": [{"ipBlock": b} for b in blocks]})
    docs: list[dict[str, Any]] = []
    for index, (key, rules) in enumerate(egress.items()):
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": name + (f"-{index}" if index else ""),
                                  "namespace": namespace},
                     "spec": {"podSelector": selectors[key], "policyTypes": ["Egress"],
                              "egress": rules}})
    if gateway or dns:
        allowed = []
        for ip, port in gateway:
            allowed.append({"to": [{"ipBlock": {"cidr": str(ipaddress.ip_network(ip))}}],
                            "ports": [{"protocol": "TCP", "port": port}]})
        for ip, port in dns:
            allowed.append({"to": [{"ipBlock": {"cidr": str(ipaddress.ip_network(ip))}}],
                            "ports": [{"protocol": "UDP", "port": port},
                                      {"protocol": "TCP", "port": port}]})
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": f"{name}-gateway-only", "namespace": namespace},
                     "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                              "egress": allowed}})
    warnings = tuple(gaps.items)
    notes = () if gateway or dns else (
        "No --gateway/--dns given: the policy sending names through egressguard is not "
        "emitted.",)
    text = header("#", "kubernetes", source, warnings, notes) + dump_documents(docs)
    return Export("kubernetes", text, warnings)
