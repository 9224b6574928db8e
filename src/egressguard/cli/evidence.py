"""`egressguard logs` (query, follow, prune, verify the audit log) and
`egressguard recommend` (a least-privilege policy from observed traffic)."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Engine

from egressguard.audit.crypto import EnvelopeSealer, Sealer, load_or_create_key
from egressguard.audit.query import (
    Filter,
    QueryError,
    parse_duration,
    parse_since,
    prune,
    query,
    scan,
    verify,
)
from egressguard.cli.output import Format, OutputOpt, to_yaml

EXIT_BAD_INPUT = 2
Store = Annotated[str | None, typer.Option(
    "--store", envvar="EGRESSGUARD_STORE",
    help="store URL (sqlite:///file.db or postgresql://...); default the embedded store")]
Api = Annotated[str | None, typer.Option(
    "--api", envvar="EGRESSGUARD_API",
    help="use a running API (default: the server of `egressguard login`)")]
Token = Annotated[str | None, typer.Option(
    "--token", envvar="EGRESSGUARD_TOKEN", help="API token (default: the login's file)")]

logs_app = typer.Typer(help="Query, follow, prune and verify the audit log.",
                       no_args_is_help=False)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def _open(url: str | None, *, every_key: bool = False) -> tuple[Engine, EnvelopeSealer]:
    """The audit tables and a reader: the local audit key for batches without a key
    header, and the configured cluster's customer-managed key (if it names one) for the
    others; `every_key`: each batch under the key its header names, whichever cluster's
    (`verify`). A batch whose key is unavailable here reads as "cannot decrypt"."""
    from egressguard.audit.db import make_engine, migrate
    from egressguard.paths import default_store_url

    engine = make_engine(url or default_store_url())  # errors: the handler in cli/main.py
    migrate(engine)
    return engine, EnvelopeSealer(_envelope(engine, every_key),
                                  legacy=Sealer(load_or_create_key()))


def _envelope(engine: Engine, every_key: bool = False) -> Any:
    from egressguard import config
    from egressguard.keys.runtime import KeyRing, reader_envelope

    url = engine.url.render_as_string(hide_password=False)
    own = reader_envelope(url, config.cluster(None))
    return KeyRing(url, own, config.cluster(None)) if every_key else own


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _line(r: dict[str, Any]) -> str:
    dest = f"{r['host']}:{r['port']}" if r["port"] else r["host"]
    extra = ""
    if r["phase"] in ("close", "exchange"):
        extra = (f" up={r['bytes_up']} down={r['bytes_down']} {r['duration_s']:.3f}s"
                 f"{' cause=' + r['close_cause'] if r['close_cause'] else ''}")
    who = (f"{r['client_identity']}@{r['client_address']}" if r["client_identity"]
           else r["client_address"])
    return (f"{_when(r['time'])} {r['cluster']:<10} {r['outcome']:<10} {r['kind']:<8} "
            f"{r['phase']:<8} {dest:<40} {r['layer']:<12} {r['rule']}"
            f"{' ' + who if who else ''}{extra}  {r['reason']}")


def _emit(records: list[dict[str, Any]], output: Format) -> None:
    """One record a line (json: one object a line; yaml: one document each), so
    `--follow` can stream."""
    for r in records:
        if output is Format.YAML:
            sys.stdout.write("---\n" + to_yaml(r))
        else:
            sys.stdout.write((json.dumps(r) if output is Format.JSON else _line(r)) + "\n")
    sys.stdout.flush()


@logs_app.callback(invoke_without_command=True)
def logs(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="e.g. 1h, 7d or an ISO time")] = None,
    until: Annotated[str | None, typer.Option(help="e.g. 10m or an ISO time")] = None,
    verdict: Annotated[str | None, typer.Option(
        help="allow, deny (enforced) or would-deny (report-only)")] = None,
    would_deny: Annotated[bool, typer.Option(
        "--would-deny", help="only what report-only mode would have denied")] = False,
    dest: Annotated[str | None, typer.Option(
        help="destination host glob, e.g. '*.blob.core.windows.net'")] = None,
    cluster: Annotated[str | None, typer.Option(help="cluster name")] = None,
    kind: Annotated[str | None, typer.Option(help="http, connect, dns, callout, flow, "
                                                  "warning")] = None,
    layer: Annotated[str | None, typer.Option(help="deciding layer")] = None,
    identity: Annotated[str | None, typer.Option(
        help="only this workload identity's records ('' for anonymous callers)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new records")
                      ] = False,
    output: OutputOpt = Format.TABLE,
    limit: Annotated[int, typer.Option(help="at most this many (the newest)")] = 100,
    store: Store = None, api: Api = None, token: Token = None,
) -> None:
    """Show audit records, oldest first (the newest `--limit`), optionally following."""
    if ctx.invoked_subcommand is not None:
        return
    if limit < 1:
        raise _fail("--limit must be at least 1")
    from egressguard.control.client import remote

    if client := remote(store, api, token):
        return _remote_logs(client, {
            "since": since, "until": until, "verdict": "would-deny" if would_deny else verdict,
            "dest": dest, "cluster": cluster, "kind": kind, "layer": layer}, limit, follow,
            output)
    try:
        flt = Filter(since=parse_since(since) if since else None,
                     until=parse_since(until) if until else None,
                     outcome="would-deny" if would_deny else verdict, dest=dest,
                     cluster=cluster, kind=kind, layer=layer, identity=identity)
    except QueryError as exc:
        raise _fail(str(exc)) from None
    engine, sealer = _open(store)
    records = list(reversed(query(engine, flt, sealer=sealer, limit=limit)))
    _emit(records, output)
    if not follow:
        return
    last = records[-1]["id"] if records else _max_id(engine)
    try:
        while True:
            time.sleep(0.5)
            fresh = query(engine, flt, sealer=sealer, limit=1000, after=last,
                          newest_first=False)
            if fresh:
                _emit(fresh, output)
                last = fresh[-1]["id"]
    except KeyboardInterrupt:
        return


def _remote_logs(client: Any, params: dict[str, Any], limit: int, follow: bool,
                 output: Format) -> None:
    """`logs` through the API (`GET /v1/audit`: the server checks the auditor role)."""
    page = client.get("/v1/audit", **params, limit=min(limit, 1000))
    records = list(reversed(page["items"]))
    _emit(records, output)
    if not follow:
        return
    last = records[-1]["id"] if records else 0
    if not records:  # start from the newest record there is
        newest = client.get("/v1/audit", **params, limit=1)["items"]
        last = newest[0]["id"] if newest else 0
    try:
        while True:
            time.sleep(0.5)
            fresh = client.get("/v1/audit", **params, limit=1000, after=last)["items"]
            if fresh:
                _emit(fresh, output)
                last = fresh[-1]["id"]
    except KeyboardInterrupt:
        return


def _max_id(engine: Engine) -> int:
    from sqlalchemy import func, select

    from egressguard.audit.schema import events
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar() or 0)


@logs_app.command("prune")
def logs_prune(
    max_age: Annotated[str | None, typer.Option(help="delete records older than, e.g. 30d")
                       ] = None,
    max_rows: Annotated[int | None, typer.Option(help="keep at most this many records")
                        ] = None,
    store: Store = None,
) -> None:
    """Apply retention now (whole batches, so `logs verify` still holds)."""
    if max_age is None and max_rows is None:
        raise _fail("give --max-age and/or --max-rows")
    try:
        age = parse_duration(max_age) if max_age else None
    except QueryError as exc:
        raise _fail(str(exc)) from None
    if max_rows is not None and max_rows < 0:
        raise _fail("--max-rows must not be negative")
    engine, sealer = _open(store)
    removed = prune(engine, sealer, max_age_s=age, max_rows=max_rows)
    typer.echo(f"removed {removed} records")


@logs_app.command("verify")
def logs_verify(store: Store = None) -> None:
    """Check that no record was edited, removed or inserted, and that no run, newest
    batches or oldest batches (other than what retention pruned) were removed.
    Batches whose customer-managed key version is unavailable here are reported as
    "cannot decrypt: key K version V unavailable (why)", never as tampered.
    Exit 0 intact, 1 tampered, 3 not tampered but not all checked (cannot decrypt)."""
    engine, sealer = _open(store, every_key=True)
    result = verify(engine, sealer)
    for problem in result.problems or []:
        typer.echo(f"TAMPERED: {problem}")
    for unreadable in result.unreadable or []:
        typer.echo(f"CANNOT DECRYPT: {unreadable}")
    for note in result.notes or []:
        typer.echo(f"note: {note}")
    verdict = ("NOT intact" if not result.ok else "intact" if result.complete
               else "not tampered in what could be checked; some batches cannot be "
                    "decrypted here (hint: grant this identity unwrapKey, or enable the "
                    "key version)")
    typer.echo(f"{result.events} records in {result.batches} batches: {verdict}")
    raise typer.Exit(1 if not result.ok else 0 if result.complete else 3)


def recommend(
    since: Annotated[str, typer.Option(help="observed window, e.g. 7d")] = "7d",
    cluster: Annotated[str | None, typer.Option(help="only this cluster's traffic")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write the policy here")] = None,
    show_diff: Annotated[bool, typer.Option(
        "--diff", help="compare with the policy in force (--policy, else the store's)")
    ] = False,
    policy: Annotated[Path | None, typer.Option(help="policy in force, for --diff")] = None,
    wildcard_min: Annotated[int, typer.Option(
        help="propose *.parent only when this many names under parent were seen")] = 5,
    upload_risk: Annotated[int, typer.Option(
        help="mark destinations that received at least this many bytes")] = 100 * 2**20,
    include_would_deny: Annotated[bool, typer.Option(
        help="include calls report-only mode would have denied")] = True,
    store: Store = None, api: Api = None, token: Token = None,
) -> None:
    """Propose a least-privilege policy that allows exactly the observed traffic."""
    from egressguard.engine import CompileError
    from egressguard.policy import PolicyError, load_policy, load_policy_text
    from egressguard.recommend import Options, diff, observe, propose, render
    from egressguard.source import snapshot_for

    if wildcard_min < 2:
        raise _fail("--wildcard-min must be at least 2")
    try:
        flt = Filter(since=parse_since(since), cluster=cluster)
        current = load_policy(policy) if policy is not None else None
        if current is not None and show_diff:
            snapshot_for(current)  # a CompileError: the CLI's one line with its hint
    except (QueryError, PolicyError) as exc:
        raise _fail(str(exc)) from None
    from egressguard.control.client import remote

    if client := remote(store, api, token):
        answer = client.request("POST", "/v1/recommend", body={
            "since": since, "cluster": cluster, "wildcard_min": wildcard_min,
            "upload_risk": upload_risk, "include_would_deny": include_would_deny,
            "diff": show_diff,
            "policy_text": policy.read_text() if policy is not None and show_diff else None})
        return _write_recommendation(answer["policy"], out, answer["rules"],
                                     answer["calls"], answer.get("diff"))
    options = Options(wildcard_min=wildcard_min, upload_risk_bytes=upload_risk,
                      include_would_deny=include_would_deny)
    engine, sealer = _open(store)
    seen = observe(scan(engine, flt, sealer=sealer), options)
    proposals = propose(seen, options)
    text = render(proposals, seen, cluster)
    load_policy_text(text, "recommendation")  # what we write always loads
    compared = None
    if show_diff:
        if current is None:
            current = _policy_in_force(store, cluster)
        try:
            compared = diff(current, proposals, seen)
        except CompileError as exc:
            raise _fail(f"the policy in force does not compile: {exc}") from None
    _write_recommendation(text, out, len(proposals), seen.calls, compared)


def _write_recommendation(text: str, out: Path | None, rules: int, calls: int,
                          compared: str | None) -> None:
    if out is not None:
        out.write_text(text)
        typer.echo(f"wrote {out}: {rules} rules from {calls} calls", err=True)
    else:
        sys.stdout.write(text)
    if compared is not None:
        sys.stdout.write(("" if out is not None else "\n") + compared)


def _policy_in_force(url: str | None, cluster: str | None) -> Any:
    from egressguard.source import SourceError, policy_in_force

    try:
        return policy_in_force(None, cluster, url)[0]
    except SourceError as exc:
        raise _fail(f"cannot read the policy in force ({exc}); pass --policy FILE") from None


def register(app: typer.Typer) -> None:
    app.add_typer(logs_app, name="logs")
    app.command()(recommend)
