"""What every exporter shares: the result value, the gap list, the comment header and the
"never wider" bookkeeping.

An exporter is pure: a `Policy` (and the `References` it names) in, an `Export` out. What
the target cannot express goes into `Export.warnings`, and the exporter then *narrows*:
an allow it cannot write is left out, a deny it cannot write exactly is written wider or,
when that is impossible, every later allow it might shadow is left out. So whatever the
exported configuration allows, egressguard allows; `--strict` refuses any export with a
warning instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from egressguard.analysis.patterns import overlap_witness
from egressguard.engine.guard import SPECIAL_RANGES
from egressguard.errors import InputError
from egressguard.policy.model import Policy, validate_host_pattern
from egressguard.policy.rules import AppRule, DestKind, NetRule

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
STORAGE_PATTERNS = tuple(f"*.{s}.core.{c}" for s in ("blob", "queue", "table", "file", "dfs",
                                                     "web")
                         for c in ("windows.net", "chinacloudapi.cn", "usgovcloudapi.net",
                                   "cloudapi.de"))
"""Host patterns covering every storage endpoint a service endpoint policy scopes."""


class ExportError(InputError, ValueError):
    """The policy cannot be exported (an unknown reference, too many collections)."""


@dataclass(frozen=True)
class Export:
    """An exported configuration: `text` is complete (header included)."""

    format: str
    text: str
    warnings: tuple[str, ...]


@dataclass
class Gaps:
    """What the target cannot express, in the order found (one line each)."""

    items: list[str] = field(default_factory=list)

    def add(self, subject: object, message: str) -> None:
        line = f"{subject}: {message}"
        if line not in self.items:
            self.items.append(line)


def header(prefix: str, fmt: str, source: str, warnings: Iterable[str],
           notes: Iterable[str] = ()) -> str:
    """A comment block: what this is, where it came from, what it leaves out."""
    lines = [f"egressguard export --format {fmt}" + (f" (policy: {source})" if source else ""),
             "Generated; edit the egressguard policy instead."]
    lines += list(notes)
    found = list(warnings)
    if found:
        lines.append(f"Not expressible in {fmt} ({len(found)}; left out or narrowed, never "
                     "widened):")
        lines += [f"  - {w}" for w in found]
    return "".join(f"{prefix} {line}".rstrip() + "\n" for line in lines)


def refuse_gateway_callouts(policy: Policy, fmt: str) -> None:
    """With `callout_enforcement: gateway`, a refusing callout entry narrows what the
    gateway proxies; no export target has the callout layers, so leaving it out would
    make the export wider than the policy: refuse instead."""
    if policy.callout_enforcement == "gateway" and any(
            not r.can_call for r in policy.callouts):
        raise ExportError(f"callout_enforcement: gateway with refusing callout entries has "
                          f"no {fmt} form (the export would allow what they refuse)",
                          hint="export a policy whose callout_enforcement is library, or "
                               "express the refusals as deny rules")


def policy_wide_gaps(policy: Policy, fmt: str, gaps: Gaps) -> None:
    """Gaps every L3/L4 or proxy target has: report-only and callouts."""
    if policy.report_only:
        gaps.add("policy", f"report-only: {fmt} has no report-only mode, so the export "
                           "enforces the policy")
    refuse_gateway_callouts(policy, fmt)
    if policy.callouts:
        gaps.add("callouts", "callout policies are enforced in-process by egressguard's "
                             "callout guard, not by the network")
    for collection in (*policy.application_rule_collections,
                       *policy.network_rule_collections):
        if collection.report_only:
            gaps.add(f"collection {collection.name}",
                     "report-only: left out (it never changes what is enforced)")


R = TypeVar("R", AppRule, NetRule)


def for_everyone(rules: Iterable[R], gaps: Gaps) -> list[R]:
    """The rules as a target that cannot tell workload identities apart may carry them:
    an allow scoped to identities is left out (carried as it is, it would allow every
    caller); a scoped deny stays, denying every caller (narrower, never wider)."""
    out: list[R] = []
    for rule in rules:
        if rule.identities and rule.allow:
            gaps.add(rule.id, "allow scoped to identities "
                     f"({', '.join(sorted(rule.identities))}) left out: the target cannot "
                     "tell callers apart")
            continue
        if rule.identities:
            gaps.add(rule.id, "deny scoped to identities applies to every caller")
        out.append(rule)
    return out


def special_networks() -> list[Network]:
    """The address guard's ranges (semantics §4 step 2), as written in the guard."""
    return [ipaddress.ip_network(p) for p in SPECIAL_RANGES]


def canonical(pattern: str) -> str:
    return validate_host_pattern(pattern)


def may_overlap(first: Iterable[str], second: Iterable[str]) -> bool:
    """Whether some host matches a pattern of each list (exact, via the analyser)."""
    firsts = [canonical(p) for p in first]
    return any(overlap_witness(a, canonical(b)) is not None for a in firsts for b in second)


def rule_host_patterns(rule: AppRule | NetRule, fqdn_tags: dict[str, tuple[str, ...]] |
                       None = None) -> tuple[str, ...]:
    """The host patterns a rule matches names by (tags expanded when known)."""
    if isinstance(rule, NetRule):
        return tuple(d.text for d in rule.destinations if d.kind is DestKind.HOST)
    tags = fqdn_tags or {}
    return rule.targets + tuple(p for t in rule.fqdn_tags for p in tags.get(t, ()))


def overlaps_net(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)


_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~5x faster


class _PlainDumper(_BaseDumper):  # type: ignore[misc,valid-type]
    """No `&id001` anchors: Kubernetes manifests are read by people and by kubectl."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_documents(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False, explicit_start=True)
