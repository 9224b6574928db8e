"""`egressguard check URL`: what the engine decides, without sending anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from egressguard.cli.output import Format, OutputOpt, emit
from egressguard.engine.query import QueryError, query_of
from egressguard.source import SourceError, active_in_force

EXIT_ALLOWED, EXIT_DENIED, EXIT_BAD_INPUT = 0, 1, 2
# The query's fields as this command's options, for one-line errors.
OPTION_NAMES = {"url": "URL", "type": "--type", "kind": "--kind", "port": "--port",
                "protocol": "--protocol", "addresses": "--address", "source": "--source",
                "identity": "--identity"}


def check(
    url: Annotated[str, typer.Argument(help="URL or host[:port] to decide")],
    callout_type: Annotated[str | None, typer.Option(
        "--type", help="decide as an in-process callout of this type (sql, kusto, ...)")] = None,
    port: Annotated[int | None, typer.Option(help="destination port (default: the URL's)")
                    ] = None,
    kind: Annotated[str | None, typer.Option(
        help="request kind: http, connect, dns or flow (default http, or callout with --type)")
    ] = None,
    address: Annotated[list[str] | None, typer.Option(
        "--address", help="address the name resolves to (repeatable), for the address guard")
    ] = None,
    source: Annotated[str | None, typer.Option(help="client source address")] = None,
    identity: Annotated[str | None, typer.Option(
        help="the caller's workload identity (default: mapped from --source, else none)")
    ] = None,
    protocol: Annotated[str | None, typer.Option(
        help="tcp, udp or icmp, for network rules (default tcp; udp for dns)")] = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", "--file", "-f",
        help="policy file (YAML or JSON); default: the policy in force (--cluster, else "
             "the store's default cluster, else the built-in deny-all policy)")] = None,
    cluster: Annotated[str | None, typer.Option(help="a stored cluster's current policy")
                       ] = None,
    store: Annotated[str | None, typer.Option(
        "--store", envvar="EGRESSGUARD_STORE",
        help="store URL for --cluster (default: the embedded store)")] = None,
    output: OutputOpt = Format.TABLE,
    as_json: Annotated[bool, typer.Option("--json", help="the same as -o json")] = False,
) -> None:
    """Decide one outbound call. Exit 0 allowed, 1 denied, 2 bad input."""
    try:
        if policy is not None and cluster is not None:
            raise ValueError("give --policy or --cluster, not both")
        query = query_of({"url": url, "type": callout_type, "kind": kind, "port": port,
                          "protocol": protocol, "addresses": address, "source": source,
                          "identity": identity},
                         OPTION_NAMES)
        snapshot = active_in_force(policy, cluster, store).snapshot
    except (QueryError, SourceError, ValueError) as exc:
        from egressguard.cli.main import error_line

        typer.echo(error_line(exc) if isinstance(exc, SourceError) else f"error: {exc}",
                   err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    decision = snapshot.decide(query.request())
    # An unparsable URL or host is bad input (exit 2), though the engine denies it too.
    bad_input = decision.rule == "guard:invalid-host"
    if as_json:
        typer.echo(json.dumps(decision.as_dict()))  # one line, as before -o existed
    else:
        emit(decision.as_dict(), output, lambda: (
            f"verdict: {decision.verdict.value}"
            f"{' (report-only)' if decision.report_only else ''}\n"
            f"layer:   {decision.layer.value}\nrule:    {decision.rule}\n"
            f"reason:  {decision.reason}\n"))
    if bad_input:
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(EXIT_ALLOWED if decision.allowed else EXIT_DENIED)


def register(app: typer.Typer) -> None:
    app.command()(check)
