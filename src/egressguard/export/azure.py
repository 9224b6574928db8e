"""Policy -> an Azure Firewall Policy rule collection group (ARM template JSON).

egressguard's model is Azure Firewall's (the seeds' enforcement point), so most of it maps
one to one: collections in evaluation order become filter rule collections with ascending
priorities (100-65000; network collections first, as Azure processes network rules
before application rules, which is also the engine's order), split where a rule's own
action differs from its collection's. Host patterns: `a.b.com` as is, `*.b.com` as is,
`.b.com` as `b.com` + `*.b.com`. What Azure cannot say:

* label globs (`md-*.b.com`) and IP literals in application rules, any-port application
  protocols, wildcard FQDNs in network rules: an allow leaves them out; a deny is written
  wider when it can be (a glob as `*.<parent>`), else every later allow it may shadow is
  left out;
* the address guard is a deny collection first (rules that lift it are warned);
* network rules' FQDN destinations go in collections after every address destination,
  as the engine decides by address before it matches names in network rules;
* service endpoint policies: every storage endpoint denied (wider deny; warned);
* report-only collections and callouts: left out.
Unrestricted policies end with allow collections for what the rules do not decide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from egressguard.engine import References
from egressguard.export.base import (
    STORAGE_PATTERNS,
    Export,
    ExportError,
    Gaps,
    canonical,
    for_everyone,
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

API_VERSION = "2023-09-01"
_PROTOCOL = {"http": "Http", "https": "Https", "mssql": "Mssql"}
_IP_PROTOCOL = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP", "any": "Any"}


def target_fqdns(pattern: str) -> list[str] | None:
    """Azure `targetFqdns` matching exactly what `pattern` matches, or None."""
    if pattern == "*" or pattern.startswith("*."):
        return [pattern]
    if pattern.startswith("."):
        return [pattern[1:], "*" + pattern]
    if "*" in pattern or pattern[0].isdigit() or ":" in pattern:
        return None  # a label glob, or an IP literal (not a target FQDN)
    return [pattern]


def _wider(pattern: str) -> list[str]:
    """Targets covering at least `pattern` (for a deny)."""
    if "*" in pattern:
        return ["*." + pattern.partition(".")[2]]
    return ["*"]


@dataclass
class _Out:
    collections: list[dict[str, Any]] = field(default_factory=list)
    poisoned: list[str] = field(default_factory=list)  # denies Azure could not write

    def add(self, name: str, action: str, rule: dict[str, Any]) -> None:
        last = self.collections[-1] if self.collections else None
        if last is not None and last["name"] == name and last["action"]["type"] == action:
            last["rules"].append(rule)
            return
        self.collections.append({"ruleCollectionType": "FirewallPolicyFilterRuleCollection",
                                 "name": name, "priority": 0, "action": {"type": action},
                                 "rules": [rule]})


def _sources(rule: AppRule | NetRule) -> list[str]:
    return [str(s) for s in rule.sources] or ["*"]


def _shadowed(out: _Out, patterns: list[str], gaps: Gaps, subject: object) -> bool:
    if out.poisoned and patterns and may_overlap(out.poisoned, patterns):
        gaps.add(subject, "left out: an earlier deny Azure cannot express may cover it")
        return True
    return False


def _network(out: _Out, rule: NetRule, refs: References, gaps: Gaps, by_name: bool) -> None:
    """One pass over a network rule: its address part, or (`by_name`) its FQDN part. The
    engine tries every rule's addresses before any rule's FQDNs, so the FQDN parts go in
    collections after all the address parts."""
    action = "Allow" if rule.allow else "Deny"
    hosts = [d.text for d in rule.destinations if d.kind is DestKind.HOST]
    names = hosts + (["*"] if any(d.kind is DestKind.ANY for d in rule.destinations) else [])
    if rule.allow and by_name and _shadowed(out, names, gaps, rule.id):
        return
    addresses: list[str] = []
    fqdns: list[str] = []
    # Azure Firewall matches an address rule by the packet's address, so it would also pass
    # a request by name that resolves into it; the engine does that only when the rule opts
    # in. Such an allow cannot be written narrowly for TCP: it is left out, not widened.
    names_leak = rule.allow and not rule.match_resolved_names \
        and bool(rule.protocols & {"tcp", "any"})
    if names_leak and not by_name and any(d.kind is not DestKind.HOST
                                          for d in rule.destinations):
        gaps.add(rule.id, "address allow over TCP left out: Azure Firewall would also pass "
                          "names resolving into it (egressguard does only with "
                          "match_resolved_names: true; set it to export this rule)")
    for dest in rule.destinations:
        if dest.kind is DestKind.TAG and dest.text not in refs.service_tags:
            raise ExportError(f"network rule {rule.id}: unknown service tag {dest.text!r}")
        if dest.kind is not DestKind.HOST:
            if not by_name and not names_leak:
                addresses.append(dest.text)
        elif not by_name:
            continue
        elif "*" not in dest.text:
            fqdns.append(dest.text.lstrip("."))
            if dest.text.startswith("."):
                unexpressed = "*" + dest.text
                gaps.add(rule.id, f"subdomains of {dest.text} (destinationFqdns take no "
                                  "wildcards)" + (" left out" if rule.allow else ""))
                if not rule.allow:
                    out.poisoned.append(unexpressed)
        else:
            gaps.add(rule.id, f"wildcard FQDN {dest.text} (destinationFqdns take none)"
                              + (" left out" if rule.allow else ""))
            if not rule.allow:
                out.poisoned.append(dest.text)
    ports = ["*"] if rule.all_ports else [
        str(max(lo, 1)) if max(lo, 1) == hi else f"{max(lo, 1)}-{hi}"
        for lo, hi in rule.ports if hi >= 1]
    base = {"ruleType": "NetworkRule", "ipProtocols": sorted(
        _IP_PROTOCOL[p] for p in rule.protocols), "sourceAddresses": _sources(rule),
        "destinationPorts": ports}
    name = f"{rule.id.collection}{'-fqdns' if by_name else ''}-{action.lower()}"
    if addresses:
        out.add(name, action, {"name": rule.id.rule, **base,
                               "destinationAddresses": addresses})
    if fqdns:
        out.add(name, action, {"name": rule.id.rule, **base, "destinationFqdns": fqdns})


def _application(out: _Out, rule: AppRule, refs: References, gaps: Gaps) -> None:
    patterns, unknown = expand_fqdn_tags(rule, refs.fqdn_tags)
    if unknown:
        raise ExportError(f"application rule {rule.id}: unknown FQDN tag {unknown[0]!r}")
    targets = [canonical(p) for p in rule.targets]
    if rule.allow and _shadowed(out, [canonical(p) for p in patterns], gaps, rule.id):
        return
    fqdns: list[str] = []
    for pattern in targets:
        found = target_fqdns(pattern)
        if found is None:
            if rule.allow:
                gaps.add(rule.id, f"target {pattern} left out (no Azure form)")
                continue
            if pattern[0].isdigit() or ":" in pattern:
                gaps.add(rule.id, f"IP target {pattern}: no Azure form for a deny")
                out.poisoned.append(pattern)
                continue
            found = _wider(pattern)
            gaps.add(rule.id, f"deny of {pattern} written wider as {found[0]}")
        fqdns += [f for f in found if f not in fqdns]
    protocols = []
    for protocol, port in rule.specs:
        if port is None or (protocol == "mssql" and port != 1433):
            gaps.add(rule.id, f"protocol {protocol}:{port or '*'} has no Azure form"
                              + (" (left out)" if rule.allow else ""))
            if not rule.allow:
                out.poisoned += targets
            continue
        protocols.append({"protocolType": _PROTOCOL[protocol], "port": port})
    if not protocols:
        return
    action = "Allow" if rule.allow else "Deny"
    name = f"{rule.id.collection}-{action.lower()}"
    base = {"ruleType": "ApplicationRule", "protocols": protocols,
            "sourceAddresses": _sources(rule), "terminateTLS": False}
    if fqdns:
        out.add(name, action, {"name": rule.id.rule, **base, "targetFqdns": fqdns})
    if rule.fqdn_tags:
        out.add(name, action, {"name": f"{rule.id.rule}-tags", **base,
                               "fqdnTags": list(rule.fqdn_tags)})


def _unrestricted_defaults(net_out: _Out, app_out: _Out, apps: list[AppRule],
                           gaps: Gaps) -> None:
    used = {port for a in apps for _, port in a.specs}
    if None in used or app_out.poisoned or net_out.poisoned:
        gaps.add("default", "unrestricted default allow left out: a rule Azure cannot "
                            "express would be overridden")
        return
    ports = sorted(p for p in used if p is not None)
    ranges, low = [], 1
    for port in ports:
        if port > low:
            ranges.append(f"{low}-{port - 1}" if port - 1 > low else str(low))
        low = port + 1
    if low <= 65535:
        ranges.append(f"{low}-65535")
    base = {"ruleType": "NetworkRule", "sourceAddresses": ["*"], "destinationAddresses": ["*"]}
    net_out.add("default-allow", "Allow", {"name": "tcp-outside-application-ports", **base,
                                           "ipProtocols": ["TCP"], "destinationPorts": ranges})
    net_out.add("default-allow", "Allow", {"name": "udp-icmp", **base, "ipProtocols": [
        "UDP", "ICMP"], "destinationPorts": ["*"]})
    if ports:
        protocols = [{"protocolType": kind, "port": port} for port in ports
                     for kind in (("Mssql",) if port == 1433 else ("Http", "Https"))]
        app_out.add("default-allow", "Allow", {
            "ruleType": "ApplicationRule", "name": "any-name", "protocols": protocols,
            "sourceAddresses": ["*"], "terminateTLS": False, "targetFqdns": ["*"]})


def export_azure(policy: Policy, refs: References | None = None, source: str = "",
                 group: str = "egressguard", group_priority: int = 1000) -> Export:
    """The ARM template of one rule collection group for `policy` (pure)."""
    refs = refs or References()
    gaps = Gaps()
    policy_wide_gaps(policy, "azure-firewall", gaps)
    net_out, app_out = _Out(), _Out()
    net_out.add("address-guard", "Deny", {
        "ruleType": "NetworkRule", "name": "special-purpose-addresses",
        "ipProtocols": ["Any"], "sourceAddresses": ["*"],
        "destinationAddresses": [str(n) for n in special_networks()],
        "destinationPorts": ["*"]})
    nets = [r for r in for_everyone(network_rules(policy), gaps) if not r.report_only]
    for rule in nets:
        if rule.allow and any(d.explicit and any(d.network.overlaps(s) for s in
                                                 special_networks()
                                                 if s.version == d.network.version)
                              for d in rule.destinations):
            gaps.add(rule.id, "names special addresses: the address guard collection keeps "
                              "them denied")
    for by_name in (False, True):
        for rule in nets:
            _network(net_out, rule, refs, gaps, by_name)
    if policy.service_endpoint_policies:
        gaps.add("service endpoint policies", "not a firewall feature: every storage "
                                              "endpoint is denied instead (wider deny)")
        app_out.add("service-endpoint-policies", "Deny", {
            "ruleType": "ApplicationRule", "name": "storage-endpoints",
            "protocols": [{"protocolType": "Https", "port": 443},
                          {"protocolType": "Http", "port": 80}],
            "sourceAddresses": ["*"], "terminateTLS": False,
            "targetFqdns": list(STORAGE_PATTERNS)})
        app_out.poisoned.append("*.core.windows.net")
    apps = [r for r in for_everyone(application_rules(policy), gaps) if not r.report_only]
    app_out.poisoned += net_out.poisoned
    for app in apps:
        _application(app_out, app, refs, gaps)
    if policy.restrict_outbound_network_access:
        if policy.allowed_fqdn_list:
            targets = [f for p in policy.allowed_fqdn_list for f in target_fqdns(p) or []]
            for p in policy.allowed_fqdn_list:
                if target_fqdns(p) is None:
                    gaps.add("allowed_fqdn_list", f"{p} left out (no Azure form)")
            kept = [t for t in targets if not (app_out.poisoned and may_overlap(
                app_out.poisoned, [t]))]
            if kept:
                app_out.add("allowed-fqdn-list", "Allow", {
                    "ruleType": "ApplicationRule", "name": "allowed-fqdns",
                    "protocols": [{"protocolType": "Http", "port": 80},
                                  {"protocolType": "Https", "port": 443}],
                    "sourceAddresses": ["*"], "terminateTLS": False, "targetFqdns": kept})
    else:
        _unrestricted_defaults(net_out, app_out, apps, gaps)
    collections = net_out.collections + app_out.collections
    step = 10 if 100 + 10 * len(collections) <= 65000 else 1
    if 100 + step * len(collections) > 65000:
        raise ExportError(f"{len(collections)} rule collections: more than Azure's "
                          "priorities 100-65000 can order")
    for index, collection in enumerate(collections):
        collection["priority"] = 100 + step * index
        if sum(c["name"] == collection["name"] for c in collections[:index]):
            collection["name"] = f"{collection['name']}-{index}"
    warnings = tuple(gaps.items)
    template = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/"
                   "deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {"generator": "egressguard export --format azure-firewall",
                     "policy": source, "notExpressible": list(warnings)},
        "parameters": {"firewallPolicyName": {"type": "string"}},
        "resources": [{
            "type": "Microsoft.Network/firewallPolicies/ruleCollectionGroups",
            "apiVersion": API_VERSION,
            "name": f"[concat(parameters('firewallPolicyName'), '/{group}')]",
            "properties": {"priority": group_priority, "ruleCollections": collections},
        }],
    }
    return Export("azure-firewall", json.dumps(template, indent=2) + "\n", warnings)
