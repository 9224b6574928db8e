"""Turn observed traffic into a least-privilege policy (pure: records in, proposal out).

What is proposed, exactly (and nothing broader):

* `http` and `connect` calls to a name: one application rule per name with exactly the
  observed `http:<port>` (plain HTTP) and `https:<port>` (CONNECT) pairs.
* A wildcard `*.<parent>` replaces the names directly under `<parent>` only when at least
  `wildcard_min` (default 5) distinct such names were seen, and `<parent>` lies inside one
  registrable domain (public suffix list): never `*.com`, `*.co.uk` or
  `*.blob.core.windows.net` (every storage account stays exact). Such a wildcard also
  matches deeper names (`a.b.<parent>`) and is marked RISK.
* Names seen only as DNS lookups: a rule with `https:443` (a DNS rule cannot name no
  protocol), commented as such.
* Calls to IP literals and `flow` requests: a network rule per address (`/32` or `/128`)
  with the observed protocol and ports. Names that resolved to a private, loopback or
  other special address additionally get such a rule, since only a network rule naming the
  address lets the address guard pass it.
* Callouts: one cluster callout entry per (type, host), its regex anchored to that host
  (`^scheme://host[:port](/|$)`).
* Enforced denials are never proposed; report-only would-be denials are (by default),
  commented with the rule that would have denied them.
* Per identity: a rule whose calls all came from authenticated workload identities is
  scoped to exactly those (`identities: [...]`), so each identity is proposed only what
  it used; a rule some anonymous caller also used stays unscoped, with a note.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from publicsuffixlist import PublicSuffixList

from egressguard.engine.guard import special_range
from egressguard.policy.model import MAX_NAME

STORAGE_HOST = re.compile(
    r"[a-z0-9]{3,24}(?:-secondary)?\.(?:z\d+\.)?(?:blob|queue|table|file|dfs|web)\.core\."
    r"(?:windows\.net|chinacloudapi\.cn|usgovcloudapi\.net|cloudapi\.de)")
# Shared front ends where one name reaches many tenants' content (domain fronting, drops).
FRONTING_SUFFIXES = ("azurefd.net", "azureedge.net", "trafficmanager.net", "cloudfront.net",
                     "fastly.net", "akamaized.net", "appspot.com", "workers.dev",
                     "ngrok.io", "ngrok-free.app", "herokuapp.com", "web.core.windows.net")
_psl = PublicSuffixList()


@dataclass(frozen=True)
class Options:
    wildcard_min: int = 5
    upload_risk_bytes: int = 100 * 1024 * 1024
    include_would_deny: bool = True


@dataclass
class Usage:
    """What was seen of one destination: calls, bytes, and report-only denials."""

    count: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    would_deny: set[str] = field(default_factory=set)
    identities: set[str] = field(default_factory=set)  # "" for anonymous callers

    def merge(self, other: Usage) -> None:
        self.count += other.count
        self.bytes_up += other.bytes_up
        self.bytes_down += other.bytes_down
        self.would_deny |= other.would_deny
        self.identities |= other.identities

    @property
    def scope(self) -> list[str]:
        """The identities to scope a rule to: all the callers, when none was anonymous."""
        if not self.identities or "" in self.identities:
            return []
        return sorted(self.identities)


@dataclass
class Observed:
    """Observed traffic keyed by destination (see `observe`)."""

    app: dict[str, dict[str, Usage]] = field(default_factory=lambda: defaultdict(dict))
    net: dict[tuple[str, str], dict[int | None, Usage]] = field(
        default_factory=lambda: defaultdict(dict))
    callouts: dict[tuple[str, str], Usage] = field(default_factory=dict)
    first: float | None = None
    last: float | None = None
    calls: int = 0


def _usage(table: dict[Any, Usage], key: Any) -> Usage:
    found = table.get(key)
    if found is None:
        found = table[key] = Usage()
    return found


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def observe(records: Iterable[Mapping[str, Any]], options: Options = Options()) -> Observed:
    """Aggregate audit records: decision records count calls, close records add bytes."""
    seen = Observed()
    for record in records:
        if record["kind"] == "warning" or not record["permitted"]:
            continue
        would = record["verdict"] == "deny"
        if would and not options.include_would_deny:
            continue
        usages = _usages_for(seen, record)
        for usage in usages:
            # (an "exchange" record is a short exchange's decision and close at once)
            if record["phase"] != "decision":
                usage.bytes_up += record["bytes_up"]
                usage.bytes_down += record["bytes_down"]
            if record["phase"] != "close":
                usage.count += 1
                usage.identities.add(str(record.get("client_identity") or ""))
                if would:
                    usage.would_deny.add(record["rule"])
        if record["phase"] != "close" and usages:
            seen.calls += 1
            seen.first = min(seen.first or record["time"], record["time"])
            seen.last = max(seen.last or record["time"], record["time"])
    return seen


def _usages_for(seen: Observed, record: Mapping[str, Any]) -> list[Usage]:
    kind, host, port = record["kind"], record["host"], record["port"]
    if kind == "callout":
        return [_usage(seen.callouts, (record["callout_type"] or "*", host))]
    literal = _ip(host)
    if kind == "flow" or literal is not None:
        if literal is None:
            return []
        protocol = record["protocol"] or "tcp"
        return [_usage(seen.net[(str(literal), protocol)], port)]
    if kind not in ("http", "connect", "dns"):
        return []
    spec = "dns" if kind == "dns" else (
        f"http:{port or 80}" if kind == "http" else f"https:{port or 443}")
    usages = [_usage(seen.app[host], spec)]
    resolved = _ip(record["resolved_address"] or "")
    if resolved is not None and kind != "dns" and special_range(resolved) is not None:
        usages.append(_usage(seen.net[(str(resolved), "tcp")], port))
    return usages


@dataclass
class Proposal:
    """One proposed rule: what it allows, why (usage) and what to look at (risks)."""

    kind: str                      # application | network | callout
    name: str
    targets: list[str]
    protocols: list[str]
    ports: list[str] = field(default_factory=list)
    callout_type: str = ""
    usage: Usage = field(default_factory=Usage)
    risks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    covers: list[str] = field(default_factory=list)   # observed hosts a wildcard covers


def risks_of(host: str) -> list[str]:
    out = []
    if STORAGE_HOST.fullmatch(host.removeprefix("*.")):
        out.append("storage account: anything can be uploaded to it")
    if any(host == s or host.endswith("." + s) for s in FRONTING_SUFFIXES):
        out.append("shared front end (CDN / front door): one name serves many tenants")
    return out


def _wildcards(hosts: Iterable[str], minimum: int) -> dict[str, list[str]]:
    """parent -> the names directly under it, where a wildcard is warranted."""
    children: dict[str, set[str]] = defaultdict(set)
    for host in hosts:
        if _ip(host) is None and "." in host:
            children[host.split(".", 1)[1]].add(host)
    return {parent: sorted(names) for parent, names in children.items()
            if len(names) >= minimum and _psl.privatesuffix(parent) is not None}


def _rule_name(target: str) -> str:
    """A rule name for `target` within the model's bound (a long host keeps a prefix and
    a hash, so distinct long targets keep distinct names)."""
    name = re.sub(r"[^a-z0-9-]+", "-", target.replace("*", "any")).strip("-") or "rule"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    return f"{name[:MAX_NAME - 13]}-{digest}"


def _volume_risk(proposal: Proposal, options: Options) -> None:
    if proposal.usage.bytes_up >= options.upload_risk_bytes:
        proposal.risks.append(f"high upload volume: {proposal.usage.bytes_up} bytes sent")


def _scope_note(proposal: Proposal) -> None:
    named = sorted(i for i in proposal.usage.identities if i)
    if named and not proposal.usage.scope:
        proposal.notes.append(f"also used by anonymous callers (besides {', '.join(named)}):"
                              " not scoped to identities")


def propose(seen: Observed, options: Options = Options()) -> list[Proposal]:
    """The rules that allow exactly the observed traffic (module docstring)."""
    proposals: list[Proposal] = []
    wild = _wildcards(seen.app, options.wildcard_min)
    covered = {host: parent for parent, names in wild.items() for host in names}
    groups: dict[str, list[str]] = defaultdict(list)
    for host in sorted(seen.app):
        groups[f"*.{covered[host]}" if host in covered else host].append(host)
    for target, hosts in sorted(groups.items()):
        usage, specs = Usage(), set()
        for host in hosts:
            for spec, part in seen.app[host].items():
                usage.merge(part)
                specs.add(spec)
        proposal = Proposal("application", _rule_name(target), [target], [], usage=usage,
                            risks=risks_of(target))
        web = sorted(s for s in specs if s != "dns")
        proposal.protocols = web or ["https:443"]
        if not web:
            proposal.notes.append("only DNS lookups were seen (rule also allows https:443)")
        if target.startswith("*."):
            proposal.covers = hosts
            proposal.risks.append(f"wildcard: {len(hosts)} names under {target[2:]} were "
                                  "seen; it also allows names not seen")
        for rule in sorted(usage.would_deny):
            proposal.notes.append(f"report-only: would have been denied by {rule}")
        _scope_note(proposal)
        _volume_risk(proposal, options)
        proposals.append(proposal)
    for (address, protocol), by_port in sorted(seen.net.items()):
        usage = Usage()
        for part in by_port.values():
            usage.merge(part)
        ip = ipaddress.ip_address(address)
        ports = sorted({str(p) for p in by_port if p is not None}, key=int) or ["*"]
        proposal = Proposal("network", _rule_name(f"{address}-{protocol}"),
                            [f"{address}/{ip.max_prefixlen}"], [protocol.upper()],
                            ports=ports, usage=usage)
        special = special_range(ip)
        proposal.risks.append(f"raw IP address{f' ({special})' if special else ''}: "
                              "allowed for IP literals and flows; names resolving to it "
                              "need match_resolved_names")
        for rule in sorted(usage.would_deny):
            proposal.notes.append(f"report-only: would have been denied by {rule}")
        _scope_note(proposal)
        _volume_risk(proposal, options)
        proposals.append(proposal)
    for (callout_type, host), usage in sorted(seen.callouts.items()):
        proposal = Proposal("callout", f"{callout_type}:{host}", [host], [],
                            callout_type=callout_type, usage=usage, risks=risks_of(host))
        proposals.append(proposal)
    return proposals


def callout_regex(host: str) -> str:
    """An RE2 pattern matching URIs of exactly `host` (any scheme, port and path)."""
    return r"^[a-z][a-z0-9+.\-]*://" + host.replace(".", r"\.") + r"(:[0-9]+)?(/|$)"


def policy_data(proposals: Iterable[Proposal]) -> dict[str, Any]:
    """The proposals as policy data (`Policy.model_validate`-able)."""
    apps, nets, callouts = [], [], []
    for p in proposals:
        scope = {"identities": p.usage.scope} if p.usage.scope else {}
        if p.kind == "application":
            apps.append({"name": p.name, "targets": p.targets, "protocols": p.protocols,
                         **scope})
        elif p.kind == "network":
            nets.append({"name": p.name, "destinations": p.targets,
                         "protocols": p.protocols, "ports": p.ports, **scope})
        else:
            callouts.append({"callout_type": p.callout_type,
                             "uri_regex": callout_regex(p.targets[0]), "can_call": True})
    data: dict[str, Any] = {"restrict_outbound_network_access": True}
    if callouts:
        data["callouts"] = callouts
    if apps:
        data["application_rule_collections"] = [
            {"name": "observed", "priority": 1000, "action": "allow", "rules": apps}]
    if nets:
        data["network_rule_collections"] = [
            {"name": "observed-network", "priority": 1000, "action": "allow", "rules": nets}]
    return data
