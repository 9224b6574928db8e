"""The dashboard's pages, rendered from plain data (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from egressguard.analysis import Report
from egressguard.store import Version
from egressguard.web.data import DecisionCount, Destination, PolicySummary, ProcessStats
from egressguard.web.html import Raw, esc, join, link, not_permitted, page, panel, table, tag, url

POLICY_ROLES = "viewer, operator or admin"
AUDIT_ROLES = "auditor or admin"
MAX_FQDNS_SHOWN = 50


def when(value: float | datetime) -> str:
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def size(n: int) -> str:
    """Bytes for people: exact below 1 KiB, else one decimal with a binary unit."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def exact(n: int) -> Raw:
    """An exact byte count (what the log holds), the rounded size as its tooltip."""
    return tag("span", f"{n:,}", title=size(n))


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


@dataclass
class Overview:
    """Everything the overview page may show; None = the caller's role may not see it."""

    cluster: str
    who: str
    role: str
    window: str
    clusters: list[str] = field(default_factory=list)
    policy: PolicySummary | None = None
    report: Report | None = None
    versions: list[Version] | None = None
    decisions: list[DecisionCount] | None = None
    destinations: list[Destination] | None = None
    denials: list[dict[str, Any]] | None = None
    stats: ProcessStats | None = None
    show_hosts: bool = False


def version_href(cluster: str, number: int) -> str:
    return url(f"/dashboard/versions/{number}", cluster=cluster)


def policy_panel(s: PolicySummary) -> Raw:
    v = s.version
    facts = [
        ("Version", link(v.number, version_href(v.cluster, v.number))),
        ("Committed", f"{when(v.created_at)} by {v.principal}"),
        ("Summary", v.summary),
        ("Restricted outbound access", yes_no(s.restricted)),
        ("Report-only", yes_no(s.report_only)),
        ("Application rules", f"{s.app_rules} in {s.app_collections} collections"),
        ("Network rules", f"{s.net_rules} in {s.net_collections} collections"),
        ("Callout rules", s.callouts),
        ("Service endpoint policies", s.service_endpoint_policies),
        ("Allowed FQDNs", len(s.allowed_fqdns)),
    ]
    rows = join(Raw(f"<tr><th>{tag('span', k)}</th><td>{tag('span', val)}</td></tr>")
                for k, val in facts)
    shown = s.allowed_fqdns[:MAX_FQDNS_SHOWN]
    fqdns = join(tag("li", tag("code", f)) for f in shown)
    more = len(s.allowed_fqdns) - len(shown)
    extra = tag("p", f"and {more} more") if more > 0 else Raw("")
    body = join([Raw(f'<table class="facts">{rows}</table>'),
                 tag("ul", fqdns, class_="fqdns") if shown else Raw(""), extra])
    return panel("Policy in force", body, ident="policy")


def decisions_panel(counts: list[DecisionCount], window: str) -> Raw:
    total = sum(d.count for d in counts)
    by_outcome: dict[str, int] = {}
    for d in counts:
        by_outcome[d.outcome] = by_outcome.get(d.outcome, 0) + d.count
    summary = join(tag("span", f"{o}: {by_outcome.get(o, 0)}", class_=f"badge {o}")
                   for o in ("allow", "deny", "would-deny"))
    rows = [(tag("span", d.outcome, class_=f"badge {d.outcome}"), d.layer, d.count)
            for d in counts]
    body = join([tag("p", join([f"{total} decisions in the last {window}. ", summary])),
                 table(["Outcome", "Layer", "Decisions"], rows, numeric=[2],
                       empty="No decisions recorded in this window.")])
    return panel(f"Decisions (last {window})", body, ident="decisions")


def destinations_panel(rows: list[Destination], window: str) -> Raw:
    note = tag("p", "Counted when a connection closes; open tunnels are not yet included.",
               class_="hint")
    body = table(["Destination", "Bytes up", "Bytes down", "Connections"],
                 [(tag("code", d.host), exact(d.bytes_up), exact(d.bytes_down), d.connections)
                  for d in rows], numeric=[1, 2, 3],
                 empty="No closed connections in this window.")
    body = join([body, note])
    return panel(f"Top destinations by bytes sent (last {window})", body, ident="exfiltration")


def denials_panel(records: list[dict[str, Any]]) -> Raw:
    rows = [(when(r["time"]), tag("code", r["host"]), r["port"] if r["port"] is not None else "",
             tag("span", r["outcome"], class_=f"badge {r['outcome']}"), r["layer"],
             tag("code", r["rule"]), r["reason"]) for r in records]
    body = table(["Time", "Host", "Port", "Outcome", "Layer", "Rule", "Reason"], rows,
                 numeric=[2], empty="No denials recorded.")
    return panel("Recent denials", body, ident="denials")


def findings_panel(report: Report) -> Raw:
    counts = join(tag("span", f"{label}: {n}", class_=f"badge sev-{label}")
                  for label, n in report.counts().items() if n)
    rows = [(tag("span", f.severity.label, class_=f"badge sev-{f.severity.label}"), f.check,
             tag("code", f.rule), join([tag("strong", f.title), Raw("<br>"), f.target]),
             f.fix) for f in report.findings]
    body = join([tag("p", counts) if report.findings else Raw(""),
                 table(["Severity", "Check", "Rule", "Finding", "Fix"], rows,
                       empty="No findings: the risk analyser found no exfiltration path.")])
    return panel("Open findings (risk analyser)", body, ident="findings")


def history_panel(cluster: str, versions: Sequence[Version]) -> Raw:
    rows = [(link(v.number, version_href(cluster, v.number)), when(v.created_at),
             v.principal, v.summary) for v in versions]
    return panel("Version history", table(["Version", "Committed", "By", "Summary"], rows),
                 ident="history")


def process_panel(s: ProcessStats, show_hosts: bool) -> Raw:
    facts = [("Open client connections", s.open_connections),
             ("Open CONNECT tunnels", s.open_tunnels),
             ("Tunnels closed by a policy change", s.revoked),
             ("Audit events queued", s.audit_pending),
             *((f"Audit events {result}", n) for result, n in sorted(s.audit.items()))]
    rows = table(["Counter", "Value"], facts, numeric=[1])
    if not show_hosts:
        warned = tag("p", f"{sum(s.exfil_warnings.values())} exfiltration warnings "
                          "(destinations: auditor or admin).")
    else:
        warned = table(["Exfiltration warning: destination", "Warnings"],
                       [(tag("code", h), n) for h, n in sorted(
                           s.exfil_warnings.items(), key=lambda kv: (-kv[1], kv[0]))],
                       numeric=[1], empty="No exfiltration warnings.")
    hint = tag("p", "This process's counters (as /metrics reports them); zero when the "
                    "API runs without a gateway.", class_="hint")
    return panel("Gateway (this process)", join([rows, warned, hint]), ident="process")


def cluster_nav(current: str, clusters: Sequence[str]) -> Raw:
    if len(clusters) < 2:
        return Raw("")
    items = join(tag("li", tag("strong", c) if c == current
                     else link(c, url("/dashboard", cluster=c))) for c in clusters)
    return tag("nav", tag("ul", items), class_="clusters")


def overview(o: Overview) -> str:
    parts: list[Raw] = [tag("p", join(["Cluster ", tag("strong", o.cluster)]),
                            class_="subtitle")]
    parts.append(policy_panel(o.policy) if o.policy is not None
                 else not_permitted("Policy in force", o.role, POLICY_ROLES))
    parts.append(decisions_panel(o.decisions, o.window) if o.decisions is not None
                 else not_permitted("Decisions", o.role, AUDIT_ROLES))
    parts.append(destinations_panel(o.destinations, o.window) if o.destinations is not None
                 else not_permitted("Top destinations by bytes sent", o.role, AUDIT_ROLES))
    parts.append(denials_panel(o.denials) if o.denials is not None
                 else not_permitted("Recent denials", o.role, AUDIT_ROLES))
    parts.append(findings_panel(o.report) if o.report is not None
                 else not_permitted("Open findings", o.role, POLICY_ROLES))
    parts.append(history_panel(o.cluster, o.versions) if o.versions is not None
                 else not_permitted("Version history", o.role, POLICY_ROLES))
    if o.stats is not None:
        parts.append(process_panel(o.stats, o.show_hosts))
    return page(f"Dashboard: {o.cluster}", join(parts), who=f"{o.who} ({o.role})",
                nav=cluster_nav(o.cluster, o.clusters))


def version_page(version: Version, diff: str | None, who: str) -> str:
    v = version
    back = url("/dashboard", cluster=v.cluster)
    nav = join([link(f"\u2190 {v.cluster} overview", back)])
    meta = tag("p", f"Committed {when(v.created_at)} by {v.principal}: {v.summary}")
    parts = [tag("p", nav, class_="subtitle"), panel(
        f"Version {v.number}", join([meta, tag("pre", v.text)]), ident="policy-text")]
    if diff is not None:
        prev = v.number - 1
        parts.append(panel(f"Changes from version {prev}",
                           join([tag("p", link(f"version {prev}",
                                               version_href(v.cluster, prev))),
                                 tag("pre", diff or "(no textual change)", class_="diff")]),
                           ident="diff"))
    return page(f"{v.cluster} version {v.number}", join(parts), who=who)


def message_page(title: str, text: str, who: str = "") -> str:
    return page(title, panel(title, tag("p", text)), who=who)


def login_page(csrf: str, next_path: str, error: str = "") -> str:
    problem = tag("p", error, class_="error") if error else Raw("")
    form = Raw(
        '<form method="post" action="/dashboard/login" class="login">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<label for="token">API token</label>'
        '<input type="password" id="token" name="token" autocomplete="off" required>'
        '<button type="submit">Log in</button></form>')
    hint = tag("p", "Use a token from `egressguard token create`. Policy panels need a "
                    "viewer, operator or admin token; audit panels an auditor or admin "
                    "token.", class_="hint")
    return page("Log in", panel("Log in", join([problem, form, hint])))
