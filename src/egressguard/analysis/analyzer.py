"""`analyze(policy, refs) -> Report`: every exfiltration path and dead rule in a policy.

Pure given `refs` (without, the catalog's references are read, as every compile does).
The checks live in `exposure` (attacker-writable destinations), `posture`
(policy-wide switches, probed through the engine) and `ordering` (evaluation order).
"""

from __future__ import annotations

from dataclasses import dataclass

from egressguard.analysis import exposure, ordering, posture
from egressguard.analysis.findings import Finding, Severity, sort_findings
from egressguard.analysis.inventory import app_rules, host_grants, net_rules
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
    "shadowed-rule": "a rule earlier rules make unreachable",
    "allow-deny-overlap": "allow and deny rules sharing destinations",
    "fqdn-nonstandard-port": "a name allowed on ports other than 80/443",
    "report-only": "denials recorded but not enforced",
    "unresolved-reference": "an unknown service tag, FQDN tag or alias",
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
    findings += posture.storage_without_sep(policy, snapshot, grants, refs)
    findings += posture.fqdn_ports(grants)
    findings += ordering.app_order(apps)
    findings += ordering.net_order(nets)
    dead = {f.rule for f in findings if f.check == "shadowed-rule"}
    findings += [f for f in ordering.network_bypasses_app_denies(nets, apps)
                 if f.rule not in dead]
    return Report(sort_findings(_dedupe(findings)))


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
