"""Policy -> nftables: the existing kernel renderer (`firewall.render`) behind `export`.

The kernel sees addresses only: application rules, the allowed FQDN list and FQDN
network destinations are enforced by the gateway and the DNS filter, so they are listed as
gaps, with the renderer's own notes."""

from __future__ import annotations

from egressguard.engine import CompileError, References
from egressguard.export.base import Export, ExportError, Gaps, header
from egressguard.firewall import Options, build_ruleset, render
from egressguard.policy import Policy


def export_nftables(policy: Policy, refs: References | None = None, source: str = "",
                    options: Options | None = None) -> Export:
    try:
        ruleset = build_ruleset(policy, refs or References(), options or Options())
    except CompileError as exc:
        raise ExportError(str(exc)) from None
    gaps = Gaps()
    for collection in policy.application_rule_collections:
        if collection.rules and not collection.report_only:
            gaps.add(f"application collection {collection.name}",
                     "names are not visible at L3 (the gateway enforces them)")
    if policy.allowed_fqdn_list:
        gaps.add("allowed_fqdn_list", "names are not visible at L3 (the gateway enforces "
                                      "them)")
    if policy.callouts:
        gaps.add("callouts", "enforced in-process by the callout guard")
    for note in ruleset.notes:
        if "report-only policy" not in note:
            gaps.add("nftables", note)
    warnings = tuple(gaps.items)
    notes = [n for n in ruleset.notes if "report-only policy" in n]
    return Export("nftables", header("#", "nftables", source, warnings, notes) + render(
        ruleset), warnings)
