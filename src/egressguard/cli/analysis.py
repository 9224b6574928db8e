"""`egressguard analyze` (exfiltration-risk findings) and `egressguard simulate` (what-if).

analyze: exit 0 unless `--fail-on SEVERITY` is given and a finding is at least that
severe (then 1); 2 for bad input.
simulate: exit 0 when no verdict changes, 1 when at least one does, 2 for bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from egressguard.analysis import Report, Severity, analyze
from egressguard.analysis.simulate import RequestListError, Simulation, parse_requests, simulate
from egressguard.catalog import references
from egressguard.cli.output import Format, OutputOpt, console, emit, is_data
from egressguard.engine import CompileError
from egressguard.source import SourceError, policy_in_force, snapshot_for

EXIT_SAME, EXIT_CHANGED, EXIT_BAD_INPUT = 0, 1, 2

StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="EGRESSGUARD_STORE",
    help="store URL for --cluster (default: the configured store)")]
_SEVERITY_STYLE = {Severity.CRITICAL: "bold red", Severity.HIGH: "red",
                   Severity.MEDIUM: "yellow", Severity.LOW: "cyan", Severity.INFO: "dim"}


def _bad(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def analyze_command(
    policy: Annotated[Path | None, typer.Option(
        "--policy", "--file", "-f", help="policy file (YAML or JSON)")] = None,
    cluster: Annotated[str | None, typer.Option(help="a stored cluster's current policy")
                       ] = None,
    store: StoreOpt = None,
    output: OutputOpt = Format.TABLE,
    fail_on: Annotated[str | None, typer.Option(
        help="exit 1 if a finding is at least this severe (info..critical)")] = None,
) -> None:
    """List the exfiltration paths and dead rules of a policy, most severe first."""
    if policy is not None and cluster is not None:
        raise _bad("give --policy or --cluster, not both")
    try:
        threshold = Severity.parse(fail_on) if fail_on else None
        loaded, source = policy_in_force(policy, cluster, store)
    except (SourceError, ValueError) as exc:
        raise _bad(str(exc)) from None
    report = analyze(loaded)
    if is_data(output):
        emit({"policy": source, **report.as_dict()}, output)
    else:
        _print_report(report, source, console(output is Format.WIDE))
    worst = report.worst()
    if threshold is not None and worst is not None and worst >= threshold:
        raise typer.Exit(1)


def _print_report(report: Report, source: str, console: Console) -> None:
    if not report.findings:
        console.print(Text(f"{source}: no findings"))
        return
    table = Table(title=f"Exfiltration-risk findings: {source}", show_lines=True)
    for column in ("severity", "check", "rule", "target", "why", "fix"):
        table.add_column(column, overflow="fold")
    for f in report.findings:
        table.add_row(Text(f.severity.label, style=_SEVERITY_STYLE[f.severity]),
                      Text(f.check), Text(f.rule), Text(f.target),
                      Text(f"{f.title}. {f.why}" + (f" Example: {f.example}" if f.example
                                                     else "")),
                      Text(f.fix))
    console.print(table)
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    console.print(Text(f"{len(report.findings)} findings: {counts}"))


def simulate_command(
    urls: Annotated[Path, typer.Option(help="request list: one URL per line (see --help)")],
    policy: Annotated[Path | None, typer.Option(
        help="proposed policy file (default: the policy in force, i.e. no change)")] = None,
    current: Annotated[Path | None, typer.Option(
        help="policy in force, as a file (default: --cluster, else the configured "
             "cluster, else the built-in deny-all policy)")] = None,
    cluster: Annotated[str | None, typer.Option(help="stored cluster in force")] = None,
    store: StoreOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Decide every request of a list under the policy in force and a proposed one.

    Request list: one per line, `#` starts a comment. A URL alone is an http request;
    `sql https://...` (any callout type) a callout; `connect host:port`, `dns host`,
    `flow ip:port`, `http URL` name the kind. Options after the target:
    `address=IP[,IP]`, `source=IP`, `port=N`.
    Exit 0: no verdict changes; 1: some verdict changes; 2: bad input.
    """
    if current is not None and cluster is not None:
        raise _bad("give --current or --cluster, not both")
    try:
        text = urls.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(f"cannot read {urls}: {exc}") from None
    try:
        probes = parse_requests(text, str(urls))
        refs = references()
        now, now_source = policy_in_force(current, cluster, store)
        new, new_source = (policy_in_force(policy) if policy is not None
                           else (now, now_source))
        result = simulate(probes, snapshot_for(now, refs), snapshot_for(new, refs),
                          now_source, new_source)
    except (RequestListError, SourceError, CompileError) as exc:
        raise _bad(str(exc)) from None
    if is_data(output):
        emit(result.as_dict(), output)
    else:
        _print_simulation(result, console(output is Format.WIDE))
    raise typer.Exit(EXIT_CHANGED if result.changed else EXIT_SAME)


def _cell(decision_effect: str, rule: str) -> Text:
    return Text(f"{decision_effect} {rule}")


def _print_simulation(result: Simulation, console: Console) -> None:
    from egressguard.analysis.simulate import effect

    table = Table(title=f"What-if: {result.current_source} -> {result.proposed_source}")
    for column in ("line", "request", "current", "proposed", "change"):
        table.add_column(column, no_wrap=True)
    for row in result.rows:
        change = row.change
        style = ""
        if row.changed:
            style = "bold red" if not row.proposed.permitted else "bold green"
        elif change == "rule":
            style = "yellow"
        table.add_row(str(row.probe.line), Text(row.probe.text),
                      _cell(effect(row.current), row.current.rule),
                      _cell(effect(row.proposed), row.proposed.rule),
                      Text(change), style=style)
    console.print(table)
    console.print(Text(result.summary()))


MAX_LAST, MAX_SCAN = 100, 50_000  # explain --last: denials shown, audit records read


def explain_command(
    url: Annotated[str | None, typer.Argument(
        help="URL or host[:port] to explain (or --client IP)")] = None,
    kind: Annotated[str | None, typer.Option(
        help="http, connect, dns or flow (default http)")] = None,
    port: Annotated[int | None, typer.Option(help="destination port (default: the URL's)")
                    ] = None,
    source: Annotated[str | None, typer.Option(
        help="the client's address (rules scoped to sources)")] = None,
    client: Annotated[str | None, typer.Option(
        help="explain this client's recent denials from the audit log (address or "
             "identity)")] = None,
    last: Annotated[int, typer.Option(
        help=f"with --client: this many newest distinct denials (1-{MAX_LAST})")] = 5,
    policy: Annotated[Path | None, typer.Option(
        "--policy", "--file", "-f", help="policy file (default: the policy in force)")
    ] = None,
    cluster: Annotated[str | None, typer.Option(help="a stored cluster's current policy")
                       ] = None,
    store: StoreOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Explain a denial: the layer and rule, the smallest change that would allow it, and
    the risk findings that change would raise.

    Give a request (as `egressguard check` takes it), or `--client IP --last N` for that
    client's newest denials in the audit log, each explained under the policy in force
    now. Nothing is changed: apply a change with `egressguard apply -f` or the dashboard.
    """
    from egressguard.analysis.explain import Explanation, explain
    from egressguard.engine.query import QueryError, query_of

    if (url is None) == (client is None):
        raise _bad("give a URL or --client IP, not both (hint: egressguard explain --help)")
    if not 1 <= last <= MAX_LAST:
        raise _bad(f"--last must be 1-{MAX_LAST}")
    if policy is not None and cluster is not None:
        raise _bad("give --policy or --cluster, not both")
    try:
        loaded, label = policy_in_force(policy, cluster, store)
        refs = references()
        if url is not None:
            query = query_of({"url": url, "kind": kind, "port": port, "source": source},
                             {"url": "URL", "kind": "--kind", "port": "--port",
                              "source": "--source"})
            found: list[Explanation] = [explain(loaded, query.request(), refs, label=label,
                                                shown=url)]
        else:
            found = [explain(loaded, request, refs, label=label, shown=shown, recorded=rec)
                     for request, shown, rec in _recent_denials(client or "", last, store)]
    except (SourceError, CompileError, QueryError) as exc:
        raise _bad(str(exc)) from None
    if is_data(output):
        data = [e.as_dict() for e in found]
        emit(data[0] if url is not None else {"client": client, "denials": data}, output)
        return
    if client is not None and not found:
        typer.echo(f"no denials of {client} in the audit log (newest {MAX_SCAN} records)")
    for i, e in enumerate(found):
        typer.echo(("\n" if i else "") + _explanation_text(e), nl=False)


def _recent_denials(client: str, last: int, store: str | None
                    ) -> list[tuple[Any, str, dict[str, object]]]:
    """The newest `last` distinct (kind, host, port) denials of `client`, newest first,
    as requests to re-decide. The client address is sealed in the record, so the filter
    runs here, over at most `MAX_SCAN` newest records."""
    from egressguard.audit.query import Filter, query
    from egressguard.cli.evidence import _open
    from egressguard.engine.request import build_request

    engine, sealer = _open(store)
    seen: dict[tuple[str, str, int | None], tuple[Any, str, dict[str, object]]] = {}
    before, read = None, 0
    while len(seen) < last and read < MAX_SCAN:
        rows = query(engine, Filter(), sealer=sealer, limit=1000, before=before)
        if not rows:
            break
        read += len(rows)
        before = rows[-1]["id"]
        for r in rows:
            if r["outcome"] not in ("deny", "would-deny") or r["phase"] == "close" or \
                    client not in (r["client_address"], r["client_identity"]):
                continue
            key = (r["kind"], r["host"], r["port"])
            if key in seen or r["kind"] not in ("http", "connect", "dns", "flow"):
                continue
            target = (f"http://{r['host']}:{r['port'] or 80}/" if r["kind"] == "http"
                      else r["host"])
            try:
                request = build_request(target, kind=r["kind"], port=r["port"] or None,
                                        source=r["client_address"] or None)
            except ValueError:
                continue  # a record no request can be rebuilt from (never proposed)
            shown = f"{r['kind']} {r['host']}" + (f":{r['port']}" if r["port"] else "")
            seen[key] = (request, shown, {k: r[k] for k in (
                "time", "outcome", "layer", "rule", "cluster")})
            if len(seen) >= last:
                break
    return list(seen.values())


def _explanation_text(e: Any) -> str:
    d = e.decision
    lines = [f"request: {e.request}"]
    if e.recorded is not None:
        lines.append(f"logged:  {e.recorded['outcome']} by {e.recorded['rule']} "
                     f"({e.recorded['layer']}), cluster {e.recorded['cluster']}")
    lines += [f"verdict: {d.verdict.value}{' (report-only)' if d.report_only else ''}",
              f"layer:   {d.layer.value}", f"rule:    {d.rule}", f"reason:  {d.reason}"]
    if not e.denied:
        return "\n".join([*lines, "nothing to change: the policy in force allows it", ""])
    if e.draft is None:
        return "\n".join([*lines, f"change:  none proposed: {e.cannot}", ""])
    lines.append(f"change:  {e.draft.summary}")
    lines += ["  " + ln for ln in e.draft.diff.splitlines()]
    lines.append(f"with it: {e.draft.verdict}" if e.draft.permits else
                 f"not enough: {e.draft.verdict} (a deny rule or another layer still "
                 "refuses; change that by hand)")
    if e.findings:
        lines.append("risks the change raises:")
        lines += [f"  [{f.severity.label}] {f.check} {f.target}: {f.title}. {f.fix}"
                  for f in e.findings]
    else:
        lines.append("risks the change raises: none")
    return "\n".join([*lines, ""])


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)
    app.command("simulate")(simulate_command)
    app.command("explain")(explain_command)
