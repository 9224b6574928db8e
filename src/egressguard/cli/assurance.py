"""Policy assurance commands: `test` (a policy file's assertions, for CI), `ceiling`
(set, show, clear and check a cluster's ceiling), `replay` (the audit log re-decided
under a candidate policy) and the reachability diff behind `versions diff A B --reach`.

Exit status: 0 passed / done, 1 an assertion failed, the ceiling is exceeded (a
`counterexample:` line follows) or new reach appeared with `--fail-on-new-reach`, 2 bad
input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from egressguard import config
from egressguard.cli.control import (
    ApiOpt,
    StoreOpt,
    TokenOpt,
    _api,
    _server,
    _store,
    _user,
)
from egressguard.cli.output import Format, OutputOpt, emit, is_data, render
from egressguard.policy import Policy, PolicyError, dump_policy, load_policy

FileOpt = Annotated[Path, typer.Option("--file", "-f", help="policy file (YAML or JSON)")]
ClusterOpt = Annotated[str | None, typer.Option(
    "--cluster", "--name", "-n", help="cluster name (default the configured cluster)")]


def _load(path: Path) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot read {path}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None


def _refs() -> Any:
    from egressguard.catalog import references

    return references()


def test(file: FileOpt, output: OutputOpt = Format.TABLE) -> None:
    """Run a policy file's assertions (exit 0 all pass, 1 one fails, 2 bad input)."""
    from egressguard.analysis.assertions import evaluate
    from egressguard.engine import CompileError, compile_policy

    policy = _load(file)
    try:
        snapshot = compile_policy(policy, _refs())
    except CompileError as exc:
        typer.echo(f"error: {exc.about(str(file))}", err=True)
        raise typer.Exit(2) from None
    outcomes = evaluate(policy, snapshot)
    failed = [o for o in outcomes if not o.passed]
    if is_data(output):
        emit({"passed": len(outcomes) - len(failed), "failed": len(failed),
                               "results": [o.as_dict() for o in outcomes]}, output)
    elif outcomes:
        table = Table("name", "request", "expect", "got", "result", "decided by")
        for o in outcomes:
            table.add_row(o.assertion.label, o.assertion.request, o.assertion.expect.value,
                          o.got, "pass" if o.passed else "FAIL", o.decision.rule)
        render(table, wide=output is Format.WIDE)
        typer.echo(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    else:
        typer.echo(f"{file}: no assertions (add `assertions:` to the policy)")
    if failed:
        raise typer.Exit(1)


ceiling_app = typer.Typer(help="A cluster's ceiling: the most any of its policies may allow "
                               "(admins only through the API).", no_args_is_help=True)


def _refused(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


@ceiling_app.command("set")
def ceiling_set(file: FileOpt, cluster: ClusterOpt = None, strict: Annotated[bool, typer.Option(
        "--strict", help="also refuse writes whose containment cannot be proved")] = False,
        store: StoreOpt = None, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Set the ceiling (refused if the policy in force already exceeds it)."""
    name, api = config.cluster(cluster), _server(store, api)
    ceiling = _load(file)
    if api:
        found = _api("PUT", api, token, f"/v1/clusters/{name}/ceiling",
                     {"policy_text": dump_policy(ceiling), "strict": strict})
        typer.echo(f"ceiling of {name} set by {found['principal']}")
        return
    with _store(store) as st:
        found_meta = st.set_ceiling(name, ceiling, _user(), strict).meta()
    typer.echo(f"ceiling of {name} set by {found_meta['principal']}"
               + (" (strict)" if strict else ""))


@ceiling_app.command("show")
def ceiling_show(cluster: ClusterOpt = None, store: StoreOpt = None, api: ApiOpt = None,
                 token: TokenOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Print the ceiling (YAML), or its metadata and text as JSON."""
    name, api = config.cluster(cluster), _server(store, api)
    if api:
        data = _api("GET", api, token, f"/v1/clusters/{name}/ceiling")
    else:
        with _store(store) as st:
            found = st.ceiling(name)
            if found is None:
                typer.echo(f"error: cluster {name!r} has no ceiling", err=True)
                raise typer.Exit(2)
            data = {**found.meta(), "policy": found.text}
    if is_data(output):
        emit(data, output)
    else:
        typer.echo(f"# ceiling of {name}, set by {data['principal']} at {data['set_at']}"
                   + (" (strict)" if data["strict"] else ""))
        typer.echo(data["policy"], nl=False)


@ceiling_app.command("clear")
def ceiling_clear(cluster: ClusterOpt = None, store: StoreOpt = None, api: ApiOpt = None,
                  token: TokenOpt = None) -> None:
    """Remove the ceiling."""
    name, api = config.cluster(cluster), _server(store, api)
    if api:
        cleared = _api("DELETE", api, token, f"/v1/clusters/{name}/ceiling")["cleared"]
    else:
        with _store(store) as st:
            cleared = st.clear_ceiling(name)
    typer.echo(f"ceiling of {name} cleared" if cleared else f"{name} had no ceiling")


@ceiling_app.command("check")
def ceiling_check(file: FileOpt, ceiling: Annotated[Path | None, typer.Option(
        "--ceiling", help="ceiling file (default: the cluster's stored ceiling)")] = None,
        cluster: ClusterOpt = None, store: StoreOpt = None,
        strict: Annotated[bool, typer.Option("--strict")] = False,
        output: OutputOpt = Format.TABLE) -> None:
    """Is everything FILE allows also allowed by the ceiling? Exit 0 yes, 1 no (with a
    counterexample) or unproved with --strict."""
    from egressguard.analysis.contain import check_arguments, contains

    policy = _load(file)
    if ceiling is not None:
        bound = _load(ceiling)
    else:
        name = config.cluster(cluster)
        with _store(store) as st:
            found = st.ceiling(name)
        if found is None:
            typer.echo(f"error: cluster {name!r} has no ceiling; give --ceiling FILE",
                       err=True)
            raise typer.Exit(2)
        bound, strict = found.policy, strict or found.strict
    answer = contains(policy, bound, _refs())
    if is_data(output):
        emit(answer.as_dict(), output)
    else:
        typer.echo(answer.message())
        if answer.counterexample:
            typer.echo("confirm: egressguard check "
                       + " ".join(check_arguments(answer.counterexample))
                       + f" --policy {file}")
    if answer.refuses(strict):
        raise typer.Exit(1)


def replay(policy: Annotated[Path, typer.Option(
        "--policy", help="the candidate policy (YAML or JSON)")],
        since: Annotated[str, typer.Option(help="recorded window, e.g. 7d, 12h")] = "7d",
        cluster: Annotated[str | None, typer.Option(
            help="only this cluster's records (default every cluster's)")] = None,
        store: StoreOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Re-decide the audit log's recorded requests under a candidate policy and report
    what would flip (newly denied / newly allowed, per client and destination)."""
    from egressguard.analysis.replay import replay as run
    from egressguard.audit.query import Filter, QueryError, parse_since, scan
    from egressguard.cli.evidence import _open
    from egressguard.engine import CompileError, compile_policy

    candidate = _load(policy)
    try:
        snapshot = compile_policy(candidate, _refs())
        flt = Filter(since=parse_since(since), cluster=cluster)
    except (CompileError, QueryError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    engine, sealer = _open(store)
    try:
        result = run(scan(engine, flt, sealer=sealer), snapshot)
    finally:
        engine.dispose()
    if is_data(output):
        emit(result.as_dict(), output)
        return
    for line in result.lines():
        typer.echo(line)
    typer.echo(result.summary())


def register(app: typer.Typer) -> None:
    app.command()(test)
    app.command()(replay)
    app.add_typer(ceiling_app, name="ceiling")
