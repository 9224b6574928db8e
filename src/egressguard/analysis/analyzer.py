"""`analyze(policy, refs) -> Report`: every exfiltration path and dead rule in a policy.

Pure given `refs` (without, the catalog's references are read, as every compile does).
The checks live in `exposure` (attacker-writable destinations), `posture`
(policy-wide switches, probed through the engine) and `ordering` (evaluation order).

Rules scoped to workload identities open a path only to those callers: a finding about
such a rule carries its identities (and says so in its title), the engine is probed as
one identity of each class of callers the scopes make, and `Report.for_identity` keeps
what one caller is exposed to. A rule whose identities and its collection's have no name
in common applies to nobody: it is reported as never reached (`shadowed-rule`), never
as an exposure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from egressguard.analysis import exposure, ordering, posture
from egressguard.analysis.findings import Finding, Severity, sort_findings
from egressguard.analysis.inventory import (
    AppRule,
    NetRule,
    app_rules,
    callers,
    host_grants,
    net_rules,
)
from egressguard.catalog import references
from egressguard.catalog.compile import snapshot_for
from egressguard.engine import CompileError, References
from egressguard.policy import Policy

CHECKS: dict[str, str] = {
    "any-host": "an application rule or allowed FQDN entry is `*`",
    "network-any": "a network allow rule with destination `*` (or 0.0.0.0/0, ::/0)",
    "broad-cidr": "a network allow rule for a huge CIDR",
    "guard-lifted": "a network allow naming a special-purpose CIDR (metadata, loopback...)",
    "wildcard-storage": "a pattern, Storage tag or callout that reaches any storage account",
    "shared-front-door": "AzureFrontDoor.Frontend or a wildcard on a front door/CDN zone",
    "multi-tenant-wildcard": "a wildcard on a zone where anyone can create resources",
    "broad-service-tag": "AzureCloud, Internet or a multi-tenant service tag",
    "curated-registry": "viennaglobal.azurecr.io allowed (the legacy curated-environment registry)",
    "unrestricted-egress": "outbound access not restricted",
    "unrestricted-with-allow-rules": "allow rules written while access is not restricted",
    "immutable-callouts-active": "the immutable callout defaults are in force",
    "callout-unrestricted": "a cluster callout entry that reaches any host",
    "callout-unanchored": "a cluster callout regex that is not anchored to its host",
    "storage-without-sep": "storage reachable with no service endpoint policy",
    "sep-ineffective": "a service endpoint policy that lets unlisted accounts through",
    "shadowed-rule": "a rule never reached (earlier rules take its requests, or its "
                     "identities and its collection's share no name)",
    "allow-deny-overlap": "allow and deny rules sharing destinations",
    "fqdn-nonstandard-port": "a name allowed on ports other than 80/443",
    "report-only": "denials recorded but not enforced",
    "unresolved-reference": "an unknown service tag, FQDN tag or alias (or, as info, an "
                            "identity the policy does not declare)",
}


@dataclass(frozen=True)
class Report:
    findings: list[Finding]

    def counts(self) -> dict[str, int]:
        counts = {s.label: 0 for s in sorted(Severity, reverse=True)}
        for finding in self.findings:
            counts[finding.severity.label] += 1
        return counts

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def as_dict(self) -> dict[str, object]:
        return {"summary": self.counts(), "findings": [f.as_dict() for f in self.findings]}

    def for_identity(self, identity: str | None) -> Report:
        """What a caller with `identity` (None: without one) is exposed to: the
        findings of unscoped rules and of rules scoped to it."""
        return Report([f for f in self.findings if f.applies_to(identity)])


def analyze(policy: Policy, refs: References | None = None) -> Report:
    """All findings for `policy`, most severe first, against `refs` (default: the
    catalog's references, so a policy analyses as `check` and the gateway compile it)."""
    refs = refs if refs is not None else references()
    try:
        snapshot = snapshot_for(policy, refs)
    except CompileError as exc:
        return Report([Finding(
            "unresolved-reference", Severity.HIGH, "policy", str(exc).partition(": ")[0],
            "the policy names something the catalog does not know",
            f"{exc}. The engine refuses to compile it, so it cannot be put in force as "
            "written and what it would allow cannot be analysed.",
            "Import the missing service tag, FQDN tag or alias into the catalog, or fix "
            "the name.")])
    apps = app_rules(policy, refs)
    nets = net_rules(policy)
    grants = host_grants(policy, refs)
    ctx = exposure.Context(policy, has_sep=bool(policy.service_endpoint_policies))
    findings: list[Finding] = []
    findings += posture.unrestricted(policy, snapshot, grants)
    findings += posture.immutable_callouts(policy, snapshot)
    findings += posture.report_only(policy, apps, nets)
    findings += exposure.grant_findings(grants, ctx)
    findings += exposure.network_findings(nets, ctx, snapshot)
    findings += posture.callout_probes(policy, snapshot, ctx.has_sep)
    findings += posture.unanchored_callouts(policy)
    findings += posture.storage_without_sep(policy, snapshot, grants, refs,
                                            callers(apps, nets))
    findings += posture.fqdn_ports(grants)
    findings += ordering.app_order(apps)
    findings += ordering.net_order(nets)
    dead = {f.rule for f in findings if f.check == "shadowed-rule"}
    findings += [f for f in ordering.network_bypasses_app_denies(nets, apps)
                 if f.rule not in dead]
    rules: list[AppRule | NetRule] = [*apps, *nets]
    scopes = {r.rule_id: r.identities for r in rules if r.identities}
    findings = [_scoped(f, scopes.get(f.rule)) for f in findings]
    findings += [_nobody(r.rule_id) for r in rules if r.nobody]
    findings += _undeclared(policy)
    return Report(sort_findings(_dedupe(findings)))


def _scoped(finding: Finding, identities: frozenset[str] | None) -> Finding:
    """`finding` marked with the identities its rule is scoped to."""
    if not identities:
        return finding
    names = tuple(sorted(identities))
    return dataclasses.replace(
        finding, identities=names,
        title=f"{finding.title} (only for identities {', '.join(names)})")


def _undeclared(policy: Policy) -> list[Finding]:
    """Identity names a collection or rule scopes itself to that the policy's
    `identities:` does not declare: valid (a store identity of that name, proxy secret
    or certificate names, may exist or be created later, which the policy cannot know),
    so a note where the name is written, in case it is misspelt."""
    out: list[Finding] = []
    declared = policy.identities.keys()
    for kind, collections in (("application", policy.application_rule_collections),
                              ("network", policy.network_rule_collections)):
        for collection in collections:
            written = [(f"{kind}:{collection.name}", collection.identities)]
            written += [(f"{kind}:{collection.name}/{rule.name}", rule.identities)
                        for rule in collection.rules]
            out += [Finding(
                "unresolved-reference", Severity.INFO, where, name,
                f"scoped to identity {name!r}, which the policy does not declare",
                f"Only a store identity named {name!r} (`egressguard identity create "
                f"{name}`) can make requests this applies to; until one exists it "
                "applies to nobody, and a misspelt name never will.",
                "Check the name against `egressguard identity list`, or declare it "
                "under `identities:` when a certificate, token or source proves it.")
                for where, names in written for name in names if name not in declared]
    return out


def _nobody(rule_id: str) -> Finding:
    return Finding(
        "shadowed-rule", Severity.LOW, rule_id, "identities",
        "rule is never reached: it applies to no caller",
        "The rule's `identities` and its collection's have no name in common, so it "
        "applies to nobody (docs/identity.md): the engine drops it, and whatever it was "
        "written to allow or deny is decided by the other rules.",
        "Name in the rule only identities its collection lists (or drop one of the "
        "lists), or delete the rule.")


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per (check, rule, target): a rule seen by two probes (e.g. an allowed
    FQDN entry both as a host pattern and as a callout destination) is reported once, at
    the higher severity."""
    best: dict[tuple[str, str, str], Finding] = {}
    for finding in findings:
        key = (finding.check, finding.rule, finding.target)
        if key not in best or finding.severity > best[key].severity:
            best[key] = finding
    return list(best.values())
