"""Control-plane commands in the `az` idiom: `mgmt`, `cluster`, `versions`, `rollback`,
`token`, and `api` (the REST API alone).

When a server is configured (`egressguard login --server URL`, `--api URL` or
`$EGRESSGUARD_API`) they go through its REST API (`control.client`): the server checks
the token's roles and records the token's name as the author. `--store URL` opens the
store directly instead (bootstrap and recovery; the principal recorded is the OS user).
Exit status: 0 done, 1 refused by the cluster's assertions or ceiling, 2 refused or bad
input.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table
from rich.text import Text

from egressguard import config
from egressguard.cli.output import Format, OutputOpt, emit
from egressguard.cli.traces import TracesOpt
from egressguard.control.client import ApiPolicyRefused, Client, remote, server_for
from egressguard.control.commands import CommandSyntaxError
from egressguard.enforce.tracing import Traces, TracingUnavailable
from egressguard.logsetup import LogFormat

if TYPE_CHECKING:
    from egressguard.control.apitls import ApiTLS
    from egressguard.store import Store

# The store (SQLAlchemy), the ARM mapping, the key checks and the management commands
# (FastAPI, through control.auth) load inside the commands that use them: a command
# through the API needs none of them (start-up: docs/cli.md, tests/cli/test_startup.py).
KEY_PROPERTY = "keyVaultProperties"  # = control.properties.KEY_PROPERTY (a test keeps it)

StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="EGRESSGUARD_STORE",
    help="store URL (sqlite:///file.db or postgresql://...); default the configured store "
         "(`egressguard config show`)")]
ApiOpt = Annotated[str | None, typer.Option(
    "--api", envvar="EGRESSGUARD_API",
    help="use a running API (e.g. http://127.0.0.1:8080); default the config file's `api`")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", envvar="EGRESSGUARD_TOKEN", help="API token (with --api)")]
NameOpt = Annotated[str | None, typer.Option(
    "--name", "-n", help="cluster name (default $EGRESSGUARD_CLUSTER, the config file's "
                         "`cluster`, else default)")]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _store(url: str | None) -> Iterator[Store]:
    from egressguard.store import Refused, open_store

    store = open_store(url)  # errors: the top-level handler (cli/main.py)
    try:
        yield store
    except CommandSyntaxError as exc:
        raise _fail(f"{exc}\n{exc.pointer()}") from None
    except Refused as exc:  # assertions or the ceiling: exit 1, the reasons one a line
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()


def _remote(store: str | None, api: str | None, token: str | None) -> Client | None:
    """The API client when a server is to be used (see `control.client.remote`)."""
    return remote(store, api, token)


def _call(client: Client, method: str, path: str, body: Any = None, *,
          params: dict[str, Any] | None = None, text: bool = False) -> Any:
    """One API request; a refusal by assertions or the ceiling exits 1 (as direct store
    access does), every other error reaches the one-line handler (cli/main.py)."""
    try:
        return client.request(method, path, body=body, params=params, text=text)
    except ApiPolicyRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _server(store: str | None, api: str | None) -> str | None:
    """The server to use, or None for the store (`--api`, then `--store`, then config)."""
    return server_for(store, api)


def _api(method: str, api: str, token: str | None, path: str, body: Any = None) -> Any:
    client = _remote(None, api, token)
    assert client is not None
    return _call(client, method, path, body)


def _emit(data: Any, output: Format, table: Table | None) -> None:
    emit(data, output, None if table is None else lambda: table)


def _cell(value: Any) -> Text:
    """Literal text: regexes such as `[a-z0-9]` must not be read as rich markup."""
    return Text(value if isinstance(value, str) else json.dumps(value))


def _resource_table(resource: dict[str, Any]) -> Table:
    table = Table(title=f"cluster {resource['name']}", show_header=True)
    table.add_column("Property")
    table.add_column("Value", overflow="fold")
    for key, value in resource["properties"].items():
        table.add_row(key, _cell(value))
    for key, value in resource.get("systemData", {}).items():
        table.add_row(key, _cell(str(value)))
    return table


def _result_table(result: dict[str, Any]) -> Table:
    first = result["Tables"][0]
    table = Table(show_header=True, show_lines=True)
    for column in first["Columns"]:
        table.add_column(column["ColumnName"], overflow="fold")
    for row in first["Rows"]:
        table.add_row(*(_cell(str(v)) for v in row))
    return table


def mgmt(
    command: Annotated[str, typer.Argument(help="e.g. '.show cluster policy callout'")],
    cluster: Annotated[str | None, typer.Option(
        help="cluster name (default: the configured cluster)")] = None,
    store: StoreOpt = None, api: ApiOpt = None, token: TokenOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Run a Kusto-style management command (.show/.alter/.alter-merge/.delete cluster
    policy callout)."""
    cluster, client = config.cluster(cluster), _remote(store, api, token)
    if client:
        result = _call(client, "POST", "/v1/mgmt", {"command": command, "cluster": cluster})
    else:
        from egressguard.control.auth import Principal
        from egressguard.control.mgmt import execute

        with _store(store) as st:
            result = execute(st, cluster, command, Principal(_user(), "admin")).as_kusto()
    _emit(result, output, _result_table(result))


cluster_app = typer.Typer(help="Show and update clusters (ARM-style properties).",
                          no_args_is_help=True)


@cluster_app.command("list")
def cluster_list(store: StoreOpt = None, api: ApiOpt = None, token: TokenOpt = None,
                 output: OutputOpt = Format.TABLE) -> None:
    """List the clusters and their current versions."""
    if client := _remote(store, api, token):
        rows = [_meta_of(r) for r in _call(client, "GET", "/v1/clusters")["value"]]
    else:
        with _store(store) as st:
            rows = [st.current(n).meta() for n in st.clusters()]
    table = Table("Cluster", "Version", "Principal", "Time", "Summary")
    for r in rows:
        table.add_row(r["cluster"], str(r["version"]), _cell(r["principal"]),
                      r["created_at"], _cell(r["summary"]))
    _emit(rows, output, table)


@cluster_app.command("show")
def cluster_show(name: NameOpt = None, store: StoreOpt = None, api: ApiOpt = None,
                 token: TokenOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Show a cluster's properties."""
    name, client = config.cluster(name), _remote(store, api, token)
    if client:
        resource = _call(client, "GET", client.cluster_path(name))
    else:
        from egressguard.control.properties import to_arm
        from egressguard.keys import clusterkeys

        with _store(store) as st:
            resource = clusterkeys.annotate(st, to_arm(st.current(name)))
    _emit(resource, output, _resource_table(resource))


def _set_value(text: str) -> Any:
    """az-style values: JSON, a Python-ish list with single quotes, or a plain string."""
    for candidate in (text, text.replace("'", '"')):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return text


def _set_pairs(sets: list[str], extra: list[str]) -> list[str]:
    """The `--set` pairs, with the further pairs given after one `--set` (which the option
    parser leaves as extra arguments); anything else extra is refused."""
    if extra and not sets:
        raise _fail(f"unexpected argument {extra[0]!r}; pairs follow --set, e.g. --set "
                    "properties.a=1 properties.b=2")
    for item in extra:
        if "=" not in item or not item.startswith("properties."):
            raise _fail(f"unexpected argument {item!r}: expected properties.<name>=<value> "
                        "after --set")
    return [*sets, *extra]


def _patch_body(sets: list[str]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        name, _, member = key.removeprefix("properties.").partition(".")
        if not eq or not key.startswith("properties.") or "." in member or (
                member and name != KEY_PROPERTY):
            raise _fail(f"--set {item!r}: expected properties.<name>=<value> or "
                        f"properties.{KEY_PROPERTY}.<member>=<value>")
        if member:  # one member of the key: the rest keep their values
            nested = props.setdefault(name, {})
            if not isinstance(nested, dict):
                raise _fail(f"--set {item!r}: {name} is already set as a whole")
            nested[member] = value  # members are strings: "" follows the latest version
        else:
            props[name] = _set_value(value)
    return {"properties": props}


@cluster_app.command("update", context_settings={"allow_extra_args": True})
def cluster_update(
    ctx: typer.Context,
    name: NameOpt = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="properties.<name>=<value>, e.g. "
                      "properties.restrictOutboundNetworkAccess=Enabled")] = None,
    add_fqdn: Annotated[list[str] | None, typer.Option(
        "--add-allowed-fqdn", "--addAllowedFQDN", help="add to allowedFqdnList")] = None,
    remove_fqdn: Annotated[list[str] | None, typer.Option(
        "--remove-allowed-fqdn", "--removeAllowedFQDN",
        help="remove from allowedFqdnList")] = None,
    what_if: Annotated[bool, typer.Option(
        "--what-if", help="change nothing: list the routes (and file upload, identity "
                          "export) that work now and would stop working")] = False,
    store: StoreOpt = None, api: ApiOpt = None, token: TokenOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Update a cluster's properties; each update is a new version. As with `az resource
    update`, one `--set` takes several pairs: `--set properties.a=1 properties.b=2`."""
    name, client = config.cluster(name), _remote(store, api, token)
    set_ = _set_pairs(set_ or [], list(ctx.args))
    body = _patch_body(set_)
    if client:
        path = client.cluster_path(name)
        if add_fqdn or remove_fqdn:
            current = _call(client, "GET", path)
            fqdns = _edit_fqdns(current["properties"]["allowedFqdnList"], body, add_fqdn,
                                remove_fqdn)
            body["properties"]["allowedFqdnList"] = fqdns
        if what_if:
            _emit_what_if(_call(client, "POST", f"{path}/whatIf", body), output)
            return
        resource = _call(client, "PATCH", path, body)
    else:
        from egressguard.control.properties import from_arm, to_arm
        from egressguard.control.whatif import route_what_if
        from egressguard.keys import clusterkeys

        with _store(store) as st:
            version = st.current(name)
            fqdns = _edit_fqdns(list(version.policy.allowed_fqdn_list), body, add_fqdn,
                                remove_fqdn)
            if fqdns is not None:
                body["properties"]["allowedFqdnList"] = fqdns
            if what_if:
                _emit_what_if(route_what_if(version.policy, body), output)
                return
            policy = from_arm(body, version.policy)
            try:
                keyed = clusterkeys.apply(st, name, body["properties"], _user())
            except clusterkeys.InvalidKeyVaultProperties as exc:
                raise _fail(f"{exc}") from None
            if not (keyed and set(body["properties"]) <= {KEY_PROPERTY}):
                summary = "update " + " ".join(
                    [*(set_ or []), *(f"+{f}" for f in add_fqdn or []),
                     *(f"-{f}" for f in remove_fqdn or [])])
                version = st.commit(name, policy, _user(), summary[:300])
            resource = clusterkeys.annotate(st, to_arm(version))
    _emit(resource, output, _resource_table(resource))


def _emit_what_if(result: dict[str, Any], output: Format) -> None:
    table = Table("Route", "Endpoint", "Destination", "Rule", "Reason",
                  title="routes that would stop working (nothing changed)")
    for c in result["stopsWorking"]:
        table.add_row(_cell(c["route"]), _cell(c["endpoint"]), _cell(c["destination"]),
                      _cell(c["rule"]), _cell(c["reason"]))
    if output is Format.TABLE and not result["stopsWorking"]:
        typer.echo("no route would stop working (nothing changed)")
        return
    _emit(result, output, table)


@cluster_app.command("endpoints")
def cluster_endpoints(
    name: NameOpt = None,
    window: Annotated[str, typer.Option(
        "--window", help="how far back observed decisions count (e.g. 15m, 1h, 1d)")] = "1h",
    store: StoreOpt = None, api: ApiOpt = None, token: TokenOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """A cluster's endpoints: derived destinations, routes, and health (healthy,
    unhealthy, degraded, dead, unknown) from the decisions observed for each."""
    from urllib.parse import quote

    name, api = config.cluster(name), config.api_url(api)
    if api:
        rows = _api("GET", api, token,
                    f"/v1/clusters/{name}/endpoints?window={quote(window)}")["value"]
    else:
        from egressguard.audit.db import make_engine, migrate
        from egressguard.audit.query import QueryError, parse_duration
        from egressguard.control.endpoints import endpoint_health

        try:
            seconds = parse_duration(window)
        except QueryError as exc:
            raise _fail(f"--window: {exc}") from None
        with _store(store) as st:
            policy = st.current(name).policy
            engine = make_engine(st.url)
            try:
                migrate(engine)
                rows = endpoint_health(engine, name, policy, seconds)
            finally:
                engine.dispose()
    table = Table("Endpoint", "Type", "Destination", "Routes", "Health",
                  title=f"cluster {name} endpoints (last {window})")
    for r in rows:
        table.add_row(_cell(r["name"]), r["type"], _cell(r["destination"]),
                      _cell(", ".join(r["routes"])), r["health"])
    _emit(rows, output, table)


@cluster_app.command("create")
def cluster_create(
    name: Annotated[str, typer.Argument(help="lower-case letters, digits and '-'")],
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", help="its first policy (YAML/JSON); default the shipped "
                            "restricted deny-all policy")] = None,
    unrestricted: Annotated[bool, typer.Option(
        "--unrestricted", help="start unrestricted (allow unless a rule denies)")] = False,
    store: StoreOpt = None, output: OutputOpt = Format.TABLE,
) -> None:
    """Create a cluster (on the store); refused if it exists. Gateways enforce it with
    `serve --cluster NAME`."""
    from egressguard.control.properties import to_arm
    from egressguard.policy import Policy, PolicyError, load_policy
    from egressguard.store import default_policy

    if from_file is not None and unrestricted:
        raise _fail("give --from-file or --unrestricted, not both")
    try:
        policy = (load_policy(from_file) if from_file is not None
                  else Policy() if unrestricted else default_policy())
    except PolicyError as exc:
        raise _fail(str(exc)) from None
    summary = (f"created from {from_file.name}" if from_file is not None
               else "created unrestricted" if unrestricted else "created (default policy)")
    with _store(store) as st:
        resource = to_arm(st.create_cluster(name, policy, _user(), summary))
    _emit(resource, output, _resource_table(resource))


@cluster_app.command("delete")
def cluster_delete(
    name: Annotated[str, typer.Argument(help="the cluster to delete with all its versions")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")
                   ] = False,
    store: StoreOpt = None,
) -> None:
    """Delete a cluster and its version history (audit records keep its name). `default`
    cannot be deleted. Gateways following it keep its last policy until restarted."""
    if not yes:
        if not sys.stdin.isatty():
            raise _fail(f"deleting cluster {name!r} removes all its versions; add --yes "
                        "to confirm")
        if not typer.confirm(f"Delete cluster {name!r} and all its versions?"):
            raise _fail("not deleted")
    with _store(store) as st:
        gone = st.delete_cluster(name)
    typer.echo(f"deleted cluster {name} ({gone} version{'s' if gone != 1 else ''})")


def _meta_of(resource: dict[str, Any]) -> dict[str, Any]:
    """A cluster resource's current-version row (as `cluster list` prints it)."""
    system = resource.get("systemData", {})
    return {"cluster": resource["name"], "version": resource["properties"].get("version"),
            "principal": system.get("lastModifiedBy", ""),
            "created_at": system.get("lastModifiedAt", ""),
            "summary": system.get("lastModifiedSummary", "")}


def _edit_fqdns(current: list[str], body: dict[str, Any], add: list[str] | None,
                remove: list[str] | None) -> list[str] | None:
    if not add and not remove:
        return None
    fqdns = list(body["properties"].get("allowedFqdnList", current))
    for fqdn in add or []:
        if fqdn.strip().lower().rstrip(".") not in fqdns:
            fqdns.append(fqdn)
    for fqdn in remove or []:
        key = fqdn.strip().lower().rstrip(".")
        if key not in fqdns:
            raise _fail(f"--remove-allowed-fqdn {fqdn!r}: not in allowedFqdnList")
        fqdns.remove(key)
    return fqdns


versions_app = typer.Typer(help="A cluster's immutable policy versions.", no_args_is_help=True)


@versions_app.command("list")
def versions_list(name: NameOpt = None, store: StoreOpt = None, api: ApiOpt = None,
                  token: TokenOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """List versions, newest first."""
    name, client = config.cluster(name), _remote(store, api, token)
    if client:
        rows = _call(client, "GET", client.cluster_path(name, "/versions"))["value"]
    else:
        with _store(store) as st:
            rows = [v.meta() for v in st.versions(name)]
    table = Table("Version", "Principal", "Time", "Summary", title=f"cluster {name}")
    for r in rows:
        table.add_row(str(r["version"]), _cell(r["principal"]), r["created_at"],
                      _cell(r["summary"]))
    _emit(rows, output, table)


@versions_app.command("show")
def versions_show(number: Annotated[int, typer.Argument(help="version number")],
                  name: NameOpt = None, store: StoreOpt = None, api: ApiOpt = None,
                  token: TokenOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Print one version's policy (its YAML; -o json or yaml: with its metadata)."""
    name, client = config.cluster(name), _remote(store, api, token)
    if client:
        shown = _call(client, "GET", client.cluster_path(name, f"/versions/{number}"))
        shown.pop("resource", None)
    else:
        with _store(store) as st:
            version = st.version(name, number)
        shown = {**version.meta(), "policy": version.text}
    emit(shown, output, lambda: shown["policy"])


@versions_app.command("diff")
def versions_diff(a: Annotated[int, typer.Argument(help="older version")],
                  b: Annotated[int, typer.Argument(help="newer version")],
                  name: NameOpt = None, store: StoreOpt = None, api: ApiOpt = None,
                  token: TokenOpt = None,
                  reach: Annotated[bool, typer.Option(
                      "--reach", help="what becomes reachable and unreachable")] = False,
                  fail_on_new_reach: Annotated[bool, typer.Option(
                      "--fail-on-new-reach", help="with --reach: exit 1 if B opens anything")
                  ] = False, output: OutputOpt = Format.TABLE) -> None:
    """Unified diff of two versions' YAML (`--reach`: of what they let through)."""
    name, client = config.cluster(name), _remote(store, api, token)
    if reach or fail_on_new_reach:
        return _reach(a, b, name, store, output, fail_on_new_reach, client)
    if client:
        sys.stdout.write(_call(client, "GET", client.cluster_path(
            name, f"/versions/{a}/diff/{b}"), text=True))
        return
    with _store(store) as st:
        sys.stdout.write(st.diff(name, a, b))


def _reach(a: int, b: int, name: str, store: str | None, output: Format,
           fail_on_new: bool, client: Client | None = None) -> None:
    """`versions diff A B --reach`: what version B makes reachable and unreachable."""
    from egressguard.analysis.cells import TooLarge
    from egressguard.analysis.reach import reach_diff
    from egressguard.catalog import references

    if client:
        from egressguard.policy import load_policy_text

        old, new = (load_policy_text(_call(client, "GET", client.cluster_path(
            name, f"/versions/{n}"))["policy"], f"version {n}") for n in (a, b))
    else:
        with _store(store) as st:
            old, new = st.version(name, a).policy, st.version(name, b).policy
    try:
        result = reach_diff(old, new, references())
    except TooLarge as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    emit(result.as_dict(), output, result.text)
    if fail_on_new and result.opened:
        raise typer.Exit(1)


def rollback(number: Annotated[int, typer.Argument(help="version to restore")],
             name: NameOpt = None, store: StoreOpt = None, api: ApiOpt = None,
             token: TokenOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Make a new version with the content of version NUMBER."""
    name, client = config.cluster(name), _remote(store, api, token)
    if client:
        resource = _call(client, "POST", client.cluster_path(name, "/rollback"),
                         {"version": number})
    else:
        from egressguard.control.properties import to_arm

        with _store(store) as st:
            resource = to_arm(st.rollback(name, number, _user()))
    _emit(resource, output, _resource_table(resource))


token_app = typer.Typer(help="API tokens (stored hashed; shown once).", no_args_is_help=True)


ExpiresOpt = Annotated[str, typer.Option(
    "--expires", help="lifetime, e.g. 30d, 12h, 2w (1m to 5 years)")]


def _lifetime(text: str) -> float:
    from egressguard.store.tokens import parse_lifetime

    try:
        return parse_lifetime(text)
    except ValueError as exc:
        raise _fail(f"--expires: {exc}") from None


def _print_new_token(made: dict[str, Any], output: Format) -> None:
    """`made`: the token's record with the clear `token` (as the API answers it)."""
    grants = "".join(f", {r} on {c}" for c, r in made.get("grants", {}).items())
    expires = (made.get("expires_at") or "?")[:19]
    emit(made, output, lambda: (
        f"token {made['id']} ({made['name']}, {made['role']}{grants}, expires {expires}); "
        f"store it now, it is not shown again:\n{made['token']}"))


@token_app.command("create")
def token_create(name: Annotated[str, typer.Option(help="who or what uses it")],
                 role: Annotated[str, typer.Option(
                     help="cluster-wide role: admin, operator, viewer, auditor, or none "
                          "(only the --grant roles)")],
                 grant: Annotated[list[str] | None, typer.Option(
                     "--grant", help="CLUSTER=ROLE: a role on one cluster (repeatable), "
                                     "e.g. --grant prod=operator")] = None,
                 expires: ExpiresOpt = "90d", store: StoreOpt = None, api: ApiOpt = None,
                 token: TokenOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Create a token (valid 90 days unless --expires says otherwise); it is printed once
    and cannot be shown again."""
    lifetime = _lifetime(expires)
    if client := _remote(store, api, token):
        from egressguard.store.tokens import parse_grants

        try:
            grants = dict(parse_grants(grant or []))
        except ValueError as exc:
            raise _fail(f"--grant: {exc}") from None
        made = _call(client, "POST", "/v1/tokens", {"name": name, "role": role,
                                                    "grants": grants, "expires": expires})
    else:
        with _store(store) as st:
            secret, info = st.create_token(name, role, _user(), lifetime=lifetime,
                                           grants=grant or [])
        made = {**info.as_dict(), "token": secret}
    _print_new_token(made, output)


@token_app.command("list")
def token_list(store: StoreOpt = None, api: ApiOpt = None, token: TokenOpt = None,
               output: OutputOpt = Format.TABLE,
               all_: Annotated[bool, typer.Option("--all", help="include revoked")] = False
               ) -> None:
    """List tokens: role, grants per cluster, expiry."""
    if client := _remote(store, api, token):
        rows = _call(client, "GET", "/v1/tokens",
                     params={"include_revoked": "true" if all_ else None})["value"]
    else:
        with _store(store) as st:
            rows = [t.as_dict() for t in st.tokens(include_revoked=all_)]
    table = Table("Id", "Name", "Role", "Grants", "Created by", "Created", "Expires",
                  "Revoked")
    for r in rows:
        grants = ", ".join(f"{c}={g}" for c, g in r["grants"].items())
        table.add_row(str(r["id"]), _cell(r["name"]), r["role"], _cell(grants),
                      _cell(r["created_by"]), r["created_at"], r["expires_at"] or "",
                      r["revoked_at"] or "")
    _emit(rows, output, table)


@token_app.command("revoke")
def token_revoke(ident: Annotated[str, typer.Argument(help="token id or name")],
                 store: StoreOpt = None, api: ApiOpt = None, token: TokenOpt = None) -> None:
    if client := _remote(store, api, token):
        revoked = _call(client, "DELETE", f"/v1/tokens/{quote(ident, safe='')}")["revoked"]
    else:
        with _store(store) as st:
            revoked = st.revoke_token(ident)
    typer.echo(f"revoked {len(revoked)} token(s)")


@token_app.command("rotate")
def token_rotate_named(ident: Annotated[str, typer.Argument(help="token name or id")],
                       expires: ExpiresOpt = "90d", store: StoreOpt = None,
                       api: ApiOpt = None, token: TokenOpt = None,
                       output: OutputOpt = Format.TABLE) -> None:
    """Issue a new secret for a token (same name, role and grants) and revoke the old
    one."""
    lifetime = _lifetime(expires)
    if client := _remote(store, api, token):
        made = _call(client, "POST", f"/v1/tokens/{quote(ident, safe='')}/rotate",
                     {"expires": expires})
    else:
        with _store(store) as st:
            secret, info = st.rotate_token(ident, _user(), lifetime=lifetime)
        made = {**info.as_dict(), "token": secret}
    _print_new_token(made, output)


@token_app.command("rotate-bootstrap")
def token_rotate(store: StoreOpt = None) -> None:
    """Revoke the bootstrap admin token and print a new one."""
    with _store(store) as st:
        token = st.rotate_bootstrap(_user())
    typer.echo(f"new bootstrap admin token (shown once):\n{token}")


def api(
    host: Annotated[str, typer.Option(help="listen address (loopback unless told)")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port")] = 8080,
    allow_cidr: Annotated[list[str] | None, typer.Option(
        "--allow-cidr", help="client source CIDRs allowed (repeatable); others get 403")
    ] = None,
    api_tls_cert: Annotated[Path | None, typer.Option(
        "--api-tls-cert", help="serve HTTPS with this PEM certificate (with --api-tls-key)")
    ] = None,
    api_tls_key: Annotated[Path | None, typer.Option(
        "--api-tls-key", help="the PEM private key of --api-tls-cert")] = None,
    api_tls_self_signed: Annotated[bool, typer.Option(
        "--api-tls-self-signed", help="HTTPS with a self-signed certificate kept in the "
                                      "data home; its SHA-256 fingerprint is printed")
    ] = False,
    store: StoreOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_format: Annotated[LogFormat, typer.Option(
        case_sensitive=False, help="text, or json: one object per line")] = LogFormat.TEXT,
    traces: TracesOpt = Traces.OFF,
) -> None:
    """Run the control-plane REST API alone."""
    from egressguard import logsetup
    from egressguard.cli.serve import api_tls
    from egressguard.cli.traces import Traced

    logsetup.configure_or_exit(log_level, log_format)
    tls = api_tls(api_tls_cert, api_tls_key, api_tls_self_signed, host)
    try:
        traced = Traced(traces, "egressguard-api")  # FastAPI traces each request with it
    except TracingUnavailable as exc:
        raise _fail(str(exc)) from None
    try:
        _run_api(store, host, port, allow_cidr, tls, log_level)
    finally:
        traced.shutdown()


def _run_api(store: str | None, host: str, port: int, allow_cidr: list[str] | None,
             tls: ApiTLS | None, log_level: str) -> None:
    """The API server in its thread until SIGTERM or SIGINT (`serve` runs the same one)."""
    from egressguard.cli.serve import ApiThread, _bind, _run, announce_api
    from egressguard.control.api import create_app

    with _store(store) as st:
        bootstrap = st.ensure_bootstrap()
        if bootstrap:
            typer.echo(f"bootstrap admin token (shown once; rotate with `egressguard token "
                       f"rotate-bootstrap`):\n{bootstrap}", err=True)
        try:
            app = create_app(st, allow_cidrs=allow_cidr or None)
        except ValueError as exc:
            raise _fail(f"--allow-cidr: {exc}") from None
        server = ApiThread(app, _bind(host, port, "--port"), tls, log_level)
        server.start()
        announce_api(server, tls)
        try:
            _run(_until_signal())
        finally:
            server.stop()


async def _until_signal() -> None:
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def login(
    server: Annotated[str, typer.Option(
        "--server", help="the API, e.g. https://gateway.internal:8080")],
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="file holding the token (default: $EGRESSGUARD_TOKEN, which "
                             "is then read by every command instead)")] = None,
    cacert: Annotated[Path | None, typer.Option(
        "--cacert", help="PEM certificate to trust for an HTTPS server (e.g. its "
                         "self-signed api-tls/cert.pem)")] = None,
) -> None:
    """Check a token against a server and store the server (and the token file's path,
    never the token) in the config file: control-plane commands then go through it."""
    from egressguard.control.client import ENV_TOKEN, read_token_file, validate_server

    url = validate_server(server)
    if token_file is not None:
        secret = read_token_file(token_file)
    elif os.environ.get(ENV_TOKEN):
        secret = os.environ[ENV_TOKEN].strip()
    else:
        raise _fail(f"no token: give --token-file FILE or set ${ENV_TOKEN} (hint: an admin "
                    "creates one with `egressguard token create`)")
    if cacert is not None and not cacert.is_file():
        raise _fail(f"--cacert {cacert}: no such file")
    ca = str(cacert.resolve()) if cacert is not None else None
    who = Client(url, secret, ca).get("/v1/tokens/self")
    written = config.write_user_config({
        "api": url, "ca_file": ca,
        "token_file": str(token_file.resolve()) if token_file is not None else None})
    grants = "".join(f", {r} on {c}" for c, r in who.get("grants", {}).items())
    typer.echo(f"logged in to {url} as {who['name']} ({who['role']}{grants}); "
               f"saved in {written}")


def logout() -> None:
    """Forget the server (the config file's api, token_file and ca_file): commands use the
    store directly again."""
    written = config.write_user_config({"api": None, "token_file": None, "ca_file": None})
    typer.echo(f"logged out; {written} names no server")


def register(app: typer.Typer) -> None:
    app.command()(mgmt)
    app.add_typer(cluster_app, name="cluster")
    app.add_typer(versions_app, name="versions")
    app.command()(rollback)
    app.add_typer(token_app, name="token")
    app.command()(api)
    app.command()(login)
    app.command()(logout)
