"""The dashboard's pages, rendered from plain data (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from egressguard.analysis import Report
from egressguard.analysis.allow import Draft
from egressguard.analysis.replay import Replay
from egressguard.store import Version
from egressguard.web.data import (
    ANONYMOUS,
    DecisionCount,
    DeniedDestination,
    Destination,
    IdentityTraffic,
    PolicySummary,
    ProcessStats,
)
from egressguard.web.html import (
    Raw,
    esc,
    host,
    join,
    link,
    not_permitted,
    page,
    panel,
    table,
    tag,
    url,
)

POLICY_ROLES = "viewer, operator or admin"
AUDIT_ROLES = "auditor or admin"
DECISION_ROLES = "operator, auditor or admin"
WINDOWS = ("15m", "1h", "6h", "24h", "7d")
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
    outcome: str | None = None
    dest: str | None = None
    can_propose: bool = False           # operator or admin: may apply a proposed allow
    audit: bool = False                 # auditor or admin: versions and reasons
    gateway_report_only: bool = False   # this process's gateway runs --report-only
    denied: list[DeniedDestination] | None = None
    live: list[dict[str, Any]] | None = None
    endpoints: list[dict[str, Any]] | None = None  # IoT Hub endpoints with their health
    identity: str | None = None         # the identity filter ("" = anonymous callers)
    identities: list[IdentityTraffic] | None = None  # auditor or admin (sealed field)
    identities_truncated: bool = False


def version_href(cluster: str, number: int) -> str:
    return url(f"/dashboard/versions/{number}", cluster=cluster)


def report_only_text(s: PolicySummary, gateway: bool) -> str:
    if gateway:
        return "yes (the gateway runs with --report-only: nothing is blocked)"
    return "yes (the policy is report-only)" if s.report_only else "no"


def policy_panel(s: PolicySummary, gateway_report_only: bool = False) -> Raw:
    v = s.version
    facts = [
        ("Version", link(v.number, version_href(v.cluster, v.number))),
        ("Committed", f"{when(v.created_at)} by {v.principal}"),
        ("Summary", v.summary),
        ("Restricted outbound access", yes_no(s.restricted)),
        ("Report-only", report_only_text(s, gateway_report_only)),
        ("Application rules", f"{s.app_rules} in {s.app_collections} collections"),
        ("Network rules", f"{s.net_rules} in {s.net_collections} collections"),
        ("Callout rules", s.callouts),
        ("Service endpoint policies", s.service_endpoint_policies),
        ("Allowed FQDNs", len(s.allowed_fqdns)),
    ]
    rows = join(Raw(f"<tr><th>{tag('span', k)}</th><td>{tag('span', val)}</td></tr>")
                for k, val in facts)
    shown = s.allowed_fqdns[:MAX_FQDNS_SHOWN]
    fqdns = join(tag("li", tag("code", host(f))) for f in shown)
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
    chart = chart_box("chart-decisions", f"Decisions over the last {window} by outcome")
    body = join([tag("p", join([f"{total} decisions in the last {window}. ", summary]),
                     id="decision-summary", aria_live="polite"),
                 chart,
                 table(["Outcome", "Layer", "Decisions"], rows, numeric=[2],
                       empty="No decisions recorded in this window.")])
    return panel(f"Decisions (last {window})", body, ident="decisions")


def destinations_panel(rows: list[Destination], window: str) -> Raw:
    note = tag("p", "Counted when a connection closes; open tunnels are not yet included.",
               class_="hint")
    body = table(["Destination", "Bytes up", "Bytes down", "Connections"],
                 [(tag("code", host(d.host)), exact(d.bytes_up), exact(d.bytes_down), d.connections)
                  for d in rows], numeric=[1, 2, 3],
                 empty="No closed connections in this window.")
    chart = chart_box("chart-bytes", f"Bytes sent per destination over the last {window}")
    body = join([chart, body, note])
    return panel(f"Top destinations by bytes sent (last {window})", body, ident="exfiltration")


def identity_label(name: str) -> str:
    return name or ANONYMOUS


def identities_panel(rows: list[IdentityTraffic], window: str, cluster: str,
                     truncated: bool) -> Raw:
    """Decisions and bytes per workload identity; each name filters the page by it."""
    cells = [(link(identity_label(t.identity),
                   url("/dashboard", cluster=cluster, window=window,
                       identity=identity_label(t.identity))),
              t.allowed, t.denied, t.would_deny, exact(t.bytes_up), exact(t.bytes_down),
              t.connections) for t in rows]
    body = table(["Identity", "Allowed", "Denied", "Would deny", "Bytes up", "Bytes down",
                  "Connections"], cells, numeric=[1, 2, 3, 4, 5, 6],
                 empty="No decisions recorded in this window.")
    note = ("Only the newest records of this window are counted (too many to open all)."
            if truncated else "Bytes are counted when a connection closes.")
    return panel(f"Decisions and bytes by identity (last {window})",
                 join([body, tag("p", note, class_="hint")]), ident="identities")


def endpoints_panel(rows: list[dict[str, Any]], window: str) -> Raw:
    """The cluster's endpoints and their health from the decisions observed."""
    body = table(["Endpoint", "Type", "Destination", "Routes", "Health"],
                 [(r["name"], r["type"], tag("code", host(str(r["destination"]))),
                   ", ".join(r["routes"]), tag("span", r["health"],
                                               class_=f"badge health-{r['health']}"))
                  for r in rows], empty="No endpoints.")
    return panel(f"Endpoints (health over the last {window})", body, ident="endpoints")


def chart_box(ident: str, label: str) -> Raw:
    """Where the script draws a chart; says so when scripts do not run."""
    return tag("figure", join([tag("figcaption", label),
                               tag("div", tag("p", "Chart loading (needs JavaScript).",
                                              class_="hint"), class_="chart", id=ident)]),
               class_="chart-box")


def propose_href(cluster: str, host_name: str, port: int | None, kind: str) -> str:
    return url("/dashboard/propose", cluster=cluster, host=host_name, port=port, kind=kind)


def proposable(kind: str) -> bool:
    return kind in ("http", "connect")


def denied_panel(rows: list[DeniedDestination], window: str, cluster: str,
                 can_propose: bool) -> Raw:
    """Denials grouped by destination, with a bar per count and, for operators, the way
    to draft an allow."""
    most = max((d.count for d in rows), default=1)
    cells = []
    for d in rows:
        bar = Raw(f'<meter min="0" max="{most}" value="{d.count}" '
                  f'aria-label="{d.count} denials"></meter>')
        row: list[object] = [tag("code", host(d.host)), "" if d.port is None else d.port,
                             d.kind, tag("span", d.outcome, class_=f"badge {d.outcome}"),
                             join([bar, f" {d.count}"]), when(d.last)]
        if can_propose:
            row.append(link("Propose allow", propose_href(cluster, d.host, d.port, d.kind))
                       if proposable(d.kind) else "")
        cells.append(row)
    headers = ["Destination", "Port", "Kind", "Outcome", "Denials", "Last"]
    if can_propose:
        headers.append("Action")
    body = table(headers, cells, numeric=[1], empty="No denials in this window.")
    return panel(f"Top denied destinations (last {window})", body, ident="denied")


def live_panel(records: list[dict[str, Any]], audit: bool, cluster: str,
               can_propose: bool) -> Raw:
    """The newest decisions; the script adds each new one as the gateway records it."""
    headers = ["Time", "Host", "Port", "Outcome", "Layer", "Rule"]
    if audit:
        headers += ["Identity", "Policy version", "Reason"]
    if can_propose:
        headers.append("Action")
    head = join(tag("th", h, scope="col") for h in headers)
    rows = []
    for r in records:
        cells: list[object] = [when(r["time"]), tag("code", host(r["host"])),
                               "" if r["port"] is None else r["port"],
                               tag("span", r["outcome"], class_=f"badge {r['outcome']}"),
                               r["layer"], tag("code", r["rule"])]
        if audit:
            cells += [identity_label(r.get("client_identity") or ""),
                      r.get("policy_version", ""), r.get("reason", "")]
        if can_propose:
            cells.append(link("Propose allow", propose_href(cluster, r["host"], r["port"],
                                                            r["kind"]))
                         if r["outcome"] != "allow" and proposable(r["kind"]) else "")
        rows.append(Raw("<tr>" + "".join(tag("td", c) for c in cells) + "</tr>"))
    status = tag("p", "Live updates need JavaScript; reload to refresh.", id="live-status",
                 class_="hint", role="status", aria_live="polite")
    body = join([status, Raw(f'<table id="live-table"><thead><tr>{head}</tr></thead>'
                             f'<tbody id="live-body">{"".join(rows)}</tbody></table>')])
    return panel("Live decisions", body, ident="live")


def filters_form(o: Overview) -> Raw:
    """Time window and filters (a plain GET form: works with the keyboard, no script)."""
    windows = WINDOWS if o.window in WINDOWS else (o.window, *WINDOWS)
    opts = join(Raw(f'<option value="{esc(w)}"{" selected" if w == o.window else ""}>'
                    f'{esc(w)}</option>') for w in windows)
    outcomes = join(Raw(f'<option value="{esc(v)}"{" selected" if v == (o.outcome or "") else ""}'
                        f'>{esc(label)}</option>')
                    for v, label in (("", "any"), ("allow", "allow"), ("deny", "deny"),
                                     ("would-deny", "would-deny")))
    return Raw(
        '<form class="filters" method="get" action="/dashboard" aria-label="Filters">'
        f'<input type="hidden" name="cluster" value="{esc(o.cluster)}">'
        f'<label>Window <select name="window">{opts}</select></label>'
        f'<label>Outcome <select name="outcome">{outcomes}</select></label>'
        '<label>Destination <input type="search" name="dest" placeholder="*.example.com" '
        f'maxlength="253" value="{esc(o.dest or "")}"></label>'
        + (f'<label>Identity <input type="search" name="identity" maxlength="128" '
           f'placeholder="{esc(ANONYMOUS)}" '
           f'value="{esc("" if o.identity is None else identity_label(o.identity))}">'
           '</label>' if o.audit else '')
        + '<button type="submit">Apply</button></form>')


def config_element(o: Overview) -> Raw:
    """What the script needs, as data attributes (the page has no inline script)."""
    return tag("div", "", id="dashboard-config", hidden="hidden", data_cluster=o.cluster,
               data_window=o.window, data_outcome=o.outcome or "", data_dest=o.dest or "",
               data_identity="" if o.identity is None else identity_label(o.identity),
               data_audit="1" if o.audit else "", data_propose="1" if o.can_propose else "",
               data_decisions="1" if o.live is not None else "")


def denials_panel(records: list[dict[str, Any]]) -> Raw:
    rows = [(when(r["time"]), tag("code", host(r["host"])),
             r["port"] if r["port"] is not None else "",
             tag("span", r["outcome"], class_=f"badge {r['outcome']}"), r["layer"],
             tag("code", r["rule"]), r["policy_version"], r["reason"]) for r in records]
    body = table(["Time", "Host", "Port", "Outcome", "Layer", "Rule", "Policy version",
                  "Reason"], rows, numeric=[2], empty="No denials recorded.")
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
                            class_="subtitle"), filters_form(o), config_element(o)]
    if o.gateway_report_only:
        parts.append(tag("p", "Report-only: yes. This gateway permits every request and "
                              "records what it would have denied.", class_="banner",
                         role="note"))
    parts.append(policy_panel(o.policy, o.gateway_report_only) if o.policy is not None
                 else not_permitted("Policy in force", o.role, POLICY_ROLES))
    parts.append(decisions_panel(o.decisions, o.window) if o.decisions is not None
                 else not_permitted("Decisions", o.role, DECISION_ROLES))
    if o.endpoints:
        parts.append(endpoints_panel(o.endpoints, o.window))
    if o.live is not None:
        parts.append(live_panel(o.live, o.audit, o.cluster, o.can_propose))
    if o.denied is not None:
        parts.append(denied_panel(o.denied, o.window, o.cluster, o.can_propose))
    parts.append(destinations_panel(o.destinations, o.window) if o.destinations is not None
                 else not_permitted("Top destinations by bytes sent", o.role, AUDIT_ROLES))
    parts.append(identities_panel(o.identities, o.window, o.cluster,
                                  o.identities_truncated) if o.identities is not None
                 else not_permitted("Decisions and bytes by identity", o.role, AUDIT_ROLES))
    parts.append(denials_panel(o.denials) if o.denials is not None
                 else not_permitted("Recent denials", o.role, AUDIT_ROLES))
    parts.append(findings_panel(o.report) if o.report is not None
                 else not_permitted("Open findings", o.role, POLICY_ROLES))
    parts.append(history_panel(o.cluster, o.versions) if o.versions is not None
                 else not_permitted("Version history", o.role, POLICY_ROLES))
    if o.audit:
        parts.append(panel("Replay", tag("p", join([
            link("Replay a version or a candidate policy",
                 url("/dashboard/replay", cluster=o.cluster)),
            " on the recorded decisions before applying it."])), ident="replay"))
    if o.stats is not None:
        parts.append(process_panel(o.stats, o.show_hosts))
    return page(f"Dashboard: {o.cluster}", join(parts), who=f"{o.who} ({o.role})",
                nav=cluster_nav(o.cluster, o.clusters), scripts=True)


def version_page(version: Version, diff: str | None, who: str) -> str:
    v = version
    back = url("/dashboard", cluster=v.cluster)
    nav = join([link(f"\u2190 {v.cluster} overview", back)])
    meta = tag("p", f"Committed {when(v.created_at)} by {v.principal}: {v.summary}")
    replay = link("Replay this version on recorded traffic",
                  url("/dashboard/replay", cluster=v.cluster, version=v.number))
    parts = [tag("p", join([nav, " · ", replay]), class_="subtitle"), panel(
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


def propose_page(cluster: str, d: Draft, form_token: str, who: str, problem: str = ""
                 ) -> str:
    """The drafted allow: what it adds (a YAML diff to copy into a policy file or review)
    and, when it would permit the request, the button that applies it as a new version."""
    t = d.target
    back = link(f"\u2190 {cluster} overview", url("/dashboard", cluster=cluster))
    facts = tag("p", join(["Allow ", tag("code", t.protocol), " to ", tag("code", host(t.host)),
                           f" ({t.kind} request) in cluster {cluster}, on top of version "
                           f"{d.base}."]))
    decided = tag("p", join(["With this change the gateway decides: ",
                             tag("strong", d.verdict)]),
                  class_="ok" if d.permits else "error")
    if not d.diff:
        note = tag("p", "The policy already holds this rule; nothing to change.", class_="hint")
    elif d.permits:
        note = Raw(
            '<form method="post" action="/dashboard/propose" class="apply">'
            + "".join(f'<input type="hidden" name="{k}" value="{esc(v)}">' for k, v in (
                ("csrf", form_token), ("cluster", cluster), ("host", t.host),
                ("port", t.port), ("kind", t.kind), ("base", d.base)))
            + f'<button type="submit">Apply as version {d.base + 1}</button>'
            '</form>')
    else:
        note = tag("p", "This draft would not allow the request (another rule or layer "
                        "decides it); change the policy by hand.", class_="error")
    error = tag("p", problem, class_="error", role="alert") if problem else Raw("")
    copy = tag("p", "Or copy the diff into the policy file you keep under version control.",
               class_="hint")
    parts = [tag("p", back, class_="subtitle"),
             panel("Propose allow", join([error, facts, decided, note]), ident="proposal"),
             panel("Policy change (YAML diff)", join([
                 tag("pre", d.diff or "(no change)", class_="diff", tabindex="0"), copy]),
                 ident="diff")]
    return page(f"Propose allow: {t.host}", join(parts), who=who)


REPLAY_WINDOWS = ("1h", "24h", "7d", "30d")


@dataclass
class ReplayView:
    """The replay page: what a candidate (a stored version, or pasted policy text) would
    flip among the recorded decisions of `since`, before anyone applies it."""

    cluster: str
    since: str
    form_token: str
    who: str
    version: int | None = None
    text: str = ""
    subject: str = ""               # what was replayed, for the heading
    result: Replay | None = None
    problem: str = ""


def _flips(title: str, rows: list[dict[str, Any]], ident: str) -> Raw:
    cells = [(r["requests"], r["client"], r["kind"], host(r["destination"])) for r in rows]
    return panel(title, table(["Requests", "Client", "Kind", "Destination"], cells,
                              numeric=[0], empty="Nothing."), ident=ident)


def replay_page(r: ReplayView) -> str:
    back = link(f"\u2190 {r.cluster} overview", url("/dashboard", cluster=r.cluster))
    windows = join(Raw(f'<option value="{w}"{" selected" if w == r.since else ""}>{w}'
                       "</option>") for w in REPLAY_WINDOWS)
    by_version = Raw(
        '<form method="get" action="/dashboard/replay" class="filters" id="replay-version">'
        f'<input type="hidden" name="cluster" value="{esc(r.cluster)}">'
        '<label>Version <input type="number" name="version" min="1" required '
        f'value="{esc(r.version or "")}"></label>'
        f'<label>Recorded over the last <select name="since">{windows}</select></label>'
        '<button type="submit">Replay version</button></form>')
    by_text = Raw(
        '<form method="post" action="/dashboard/replay" class="replay" id="replay-text">'
        f'<input type="hidden" name="csrf" value="{esc(r.form_token)}">'
        f'<input type="hidden" name="cluster" value="{esc(r.cluster)}">'
        f'<input type="hidden" name="since" value="{esc(r.since)}">'
        '<label for="policy_text">Candidate policy (YAML or JSON)</label>'
        f'<textarea id="policy_text" name="policy_text" rows="10" required>{esc(r.text)}'
        '</textarea><button type="submit">Replay candidate</button></form>')
    hint = tag("p", "Each recorded decision is decided again under the candidate; what it "
                    "would do differently from what was done is listed by client and "
                    "destination. Nothing is applied.", class_="hint")
    parts = [tag("p", back, class_="subtitle"),
             panel("Replay on recorded traffic", join([hint, by_version, by_text]),
                   ident="replay-form")]
    if r.problem:
        parts.append(panel("Cannot replay", tag("p", r.problem, class_="error",
                                                 role="alert"), ident="replay-problem"))
    if r.result is not None:
        found = r.result.as_dict()
        parts.append(panel(f"Replay of {r.subject} over the last {r.since}",
                           tag("p", found["summary"], id="replay-summary",
                               aria_live="polite"), ident="replay-summary-panel"))
        parts.append(_flips("Newly denied", found["newly_denied"], "newly-denied"))
        parts.append(_flips("Newly allowed", found["newly_allowed"], "newly-allowed"))
    return page(f"Replay: {r.cluster}", join(parts), who=r.who)
