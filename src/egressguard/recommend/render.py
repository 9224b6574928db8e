"""Write a recommendation as commented YAML, and compare it with the policy in force."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from egressguard.catalog.compile import snapshot_for
from egressguard.engine import Kind, Request
from egressguard.engine.snapshot import References
from egressguard.policy import Policy
from egressguard.recommend.build import Observed, Proposal, Usage, callout_regex


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _usage(u: Usage) -> str:
    return (f"{u.count} call{'s' if u.count != 1 else ''}, {human_bytes(u.bytes_up)} up, "
            f"{human_bytes(u.bytes_down)} down")


def _q(value: object) -> str:
    return json.dumps(value)  # JSON scalars and flow lists are valid YAML


def _comments(p: Proposal, indent: str) -> list[str]:
    lines = [f"{indent}# {_usage(p.usage)}"]
    if p.covers:
        lines.append(f"{indent}# covers: {', '.join(p.covers)}")
    lines += [f"{indent}# RISK: {r}" for r in p.risks]
    lines += [f"{indent}# note: {n}" for n in p.notes]
    return lines


def _time(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else "-"


def render(proposals: Sequence[Proposal], seen: Observed, cluster: str | None) -> str:
    """Commented YAML that `egressguard.policy.load_policy` reads back."""
    risky = sum(1 for p in proposals if p.risks)
    out = [
        "# Least-privilege policy recommended by `egressguard recommend` from "
        f"{seen.calls} observed calls",
        f"# (cluster {cluster or 'all'}, {_time(seen.first)} to {_time(seen.last)}).",
        f"# {len(proposals)} rules, {risky} marked RISK: review them before enforcing.",
        "restrict_outbound_network_access: true",
    ]
    callouts = [p for p in proposals if p.kind == "callout"]
    apps = [p for p in proposals if p.kind == "application"]
    nets = [p for p in proposals if p.kind == "network"]
    if callouts:
        out.append("callouts:")
        for p in callouts:
            out += _comments(p, "  ")
            out.append(f"  - {{callout_type: {_q(p.callout_type)}, "
                       f"uri_regex: {_q(callout_regex(p.targets[0]))}, can_call: true}}")
    if apps:
        out += ["application_rule_collections:", "  - name: observed", "    priority: 1000",
                "    action: allow", "    rules:"]
        for p in apps:
            out += _comments(p, "      ")
            out += [f"      - name: {_q(p.name)}", f"        targets: {_q(p.targets)}",
                    f"        protocols: {_q(p.protocols)}"]
            if p.usage.scope:
                out.append(f"        identities: {_q(p.usage.scope)}")
    if nets:
        out += ["network_rule_collections:", "  - name: observed-network",
                "    priority: 1000", "    action: allow", "    rules:"]
        for p in nets:
            out += _comments(p, "      ")
            out += [f"      - name: {_q(p.name)}", f"        destinations: {_q(p.targets)}",
                    f"        protocols: {_q(p.protocols)}", f"        ports: {_q(p.ports)}"]
            if p.usage.scope:
                out.append(f"        identities: {_q(p.usage.scope)}")
    return "\n".join(out) + "\n"


def requests_of(seen: Observed) -> list[tuple[str, Request]]:
    """One engine request per observed destination (for diffs and self-checks)."""
    out: list[tuple[str, Request]] = []
    for host, specs in sorted(seen.app.items()):
        for spec, usage in sorted(specs.items()):
            for who in sorted(usage.identities) or [""]:
                tail = f" as {who}" if who else ""
                if spec == "dns":
                    out.append((f"dns {host}{tail}", Request(
                        kind=Kind.DNS, host=host, protocol="udp", identity=who)))
                    continue
                scheme, _, port = spec.partition(":")
                kind = Kind.HTTP if scheme == "http" else Kind.CONNECT
                out.append((f"{kind.value} {host}:{port}{tail}", Request(
                    kind=kind, host=host, port=int(port), scheme=scheme, identity=who)))
    for (address, protocol), by_port in sorted(seen.net.items()):
        for net_port, usage in sorted(by_port.items(), key=lambda p: p[0] or 0):
            for who in sorted(usage.identities) or [""]:
                out.append((f"flow {protocol} {address}:{net_port}"
                            f"{f' as {who}' if who else ''}", Request(
                                kind=Kind.FLOW, host=address, port=net_port,
                                protocol=protocol, identity=who)))
    for callout_type, host in sorted(seen.callouts):
        out.append((f"callout {callout_type} {host}", Request.from_url(
            f"https://{host}/", kind=Kind.CALLOUT, callout_type=callout_type)))
    return out


def diff(current: Policy, proposals: Sequence[Proposal], seen: Observed,
         refs: References | None = None) -> str:
    """What changes: observed calls the policy in force denies (`+`), calls it already
    allows (`=`), and rules in force that no observed call used (`-`). Compiled with the
    catalog's references unless `refs` is given (a policy naming service tags compiles)."""
    snapshot = snapshot_for(current, refs)
    used: set[str] = set()
    lines = []
    for label, request in requests_of(seen):
        decision = snapshot.decide(request)
        if decision.allowed:
            used.add(decision.rule)
            lines.append(f"= {label}: already allowed by {decision.rule}")
        else:
            lines.append(f"+ {label}: newly allowed (in force: denied by {decision.rule})")
    for rule_id in _rule_ids(current):
        if rule_id not in used:
            lines.append(f"- {rule_id}: no observed call used it (dropped)")
    return "\n".join(lines) + "\n"


def _rule_ids(policy: Policy) -> list[str]:
    ids = [f"application:{c.name}/{r.name}" for c in policy.application_rule_collections
           for r in c.rules]
    ids += [f"network:{c.name}/{r.name}" for c in policy.network_rule_collections
            for r in c.rules]
    ids += [f"allowed_fqdn:{p}" for p in policy.allowed_fqdn_list]
    return ids
