"""Control-plane commands in the `az` idiom: `mgmt`, `cluster`, `versions`, `rollback`,
`token`, and `api` (the REST API alone).

They work on the store directly (`--store URL`, default the embedded SQLite file; the
principal recorded is the OS user) or, for `mgmt` and `cluster`, through a running API
(`--api URL --token T`). Exit status: 0 done, 2 refused or bad input.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from egressguard import config
from egressguard.control.auth import Principal
from egressguard.control.commands import CommandSyntaxError
from egressguard.control.mgmt import execute
from egressguard.control.properties import KEY_PROPERTY, from_arm, to_arm
from egressguard.keys import clusterkeys
from egressguard.store import Refused, Store, open_store

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
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table or json")]

out = Console()


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


def _api(method: str, api: str, token: str | None, path: str, body: Any = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, api.rstrip("/") + path, json=body, headers=headers,
                                 timeout=30)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {api}: {exc}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except Exception:
            message = response.text
        if response.status_code == 422 and str(message).startswith("policy refused:"):
            typer.echo(f"error: {response.status_code}: {message}", err=True)
            raise typer.Exit(1)  # assertions or the ceiling refused the write
        raise _fail(f"{response.status_code}: {message}")
    return response.json()


def _emit(data: Any, output: str, table: Table | None) -> None:
    if output == "json" or table is None:
        typer.echo(json.dumps(data, indent=2))
    else:
        out.print(table)


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
    output: OutputOpt = "table",
) -> None:
    """Run a Kusto-style management command (.show/.alter/.alter-merge/.delete cluster
    policy callout)."""
    cluster, api = config.cluster(cluster), config.api_url(api)
    if api:
        result = _api("POST", api, token, "/v1/mgmt", {"command": command, "cluster": cluster})
    else:
        with _store(store) as st:
            result = execute(st, cluster, command, Principal(_user(), "admin")).as_kusto()
    _emit(result, output, _result_table(result))


cluster_app = typer.Typer(help="Show and update clusters (ARM-style properties).",
                          no_args_is_help=True)


@cluster_app.command("list")
def cluster_list(store: StoreOpt = None, output: OutputOpt = "table") -> None:
    """List the clusters and their current versions."""
    with _store(store) as st:
        rows = [st.current(n).meta() for n in st.clusters()]
    table = Table("Cluster", "Version", "Principal", "Time", "Summary")
    for r in rows:
        table.add_row(r["cluster"], str(r["version"]), _cell(r["principal"]),
                      r["created_at"], _cell(r["summary"]))
    _emit(rows, output, table)


@cluster_app.command("show")
def cluster_show(name: NameOpt = None, store: StoreOpt = None, api: ApiOpt = None,
                 token: TokenOpt = None, output: OutputOpt = "table") -> None:
    """Show a cluster's properties."""
    name, api = config.cluster(name), config.api_url(api)
    if api:
        resource = _api("GET", api, token, f"/v1/clusters/{name}")
    else:
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


@cluster_app.command("update")
def cluster_update(
    name: NameOpt = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="properties.<name>=<value>, e.g. "
                      "properties.restrictOutboundNetworkAccess=Enabled")] = None,
    add_fqdn: Annotated[list[str] | None, typer.Option(
        "--add-allowed-fqdn", "--addAllowedFQDN", help="add to allowedFqdnList")] = None,
    remove_fqdn: Annotated[list[str] | None, typer.Option(
        "--remove-allowed-fqdn", "--removeAllowedFQDN",
        help="remove from allowedFqdnList")] = None,
    store: StoreOpt = None, api: ApiOpt = None, token: TokenOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Update a cluster's properties; each update is a new version."""
    name, api = config.cluster(name), config.api_url(api)
    body = _patch_body(set_ or [])
    if api:
        current = _api("GET", api, token, f"/v1/clusters/{name}")
        fqdns = _edit_fqdns(current["properties"]["allowedFqdnList"], body, add_fqdn,
                            remove_fqdn)
        if fqdns is not None:
            body["properties"]["allowedFqdnList"] = fqdns
        resource = _api("PATCH", api, token, f"/v1/clusters/{name}", body)
    else:
        with _store(store) as st:
            version = st.current(name)
            fqdns = _edit_fqdns(list(version.policy.allowed_fqdn_list), body, add_fqdn,
                                remove_fqdn)
            if fqdns is not None:
                body["properties"]["allowedFqdnList"] = fqdns
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


@cluster_app.command("create")
def cluster_create(
    name: Annotated[str, typer.Argument(help="lower-case letters, digits and '-'")],
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", help="its first policy (YAML/JSON); default the shipped "
                            "restricted deny-all policy")] = None,
    unrestricted: Annotated[bool, typer.Option(
        "--unrestricted", help="start unrestricted (allow unless a rule denies)")] = False,
    store: StoreOpt = None, output: OutputOpt = "table",
) -> None:
    """Create a cluster (on the store); refused if it exists. Gateways enforce it with
    `serve --cluster NAME`."""
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
def versions_list(name: NameOpt = None, store: StoreOpt = None,
                  output: OutputOpt = "table") -> None:
    """List versions, newest first."""
    name = config.cluster(name)
    with _store(store) as st:
        rows = [v.meta() for v in st.versions(name)]
    table = Table("Version", "Principal", "Time", "Summary", title=f"cluster {name}")
    for r in rows:
        table.add_row(str(r["version"]), _cell(r["principal"]), r["created_at"],
                      _cell(r["summary"]))
    _emit(rows, output, table)


@versions_app.command("show")
def versions_show(number: Annotated[int, typer.Argument(help="version number")],
                  name: NameOpt = None, store: StoreOpt = None,
                  output: OutputOpt = "yaml") -> None:
    """Print one version's policy (YAML, or --output json for its metadata too)."""
    name = config.cluster(name)
    with _store(store) as st:
        version = st.version(name, number)
    if output == "json":
        typer.echo(json.dumps({**version.meta(), "policy": version.text}, indent=2))
    else:
        sys.stdout.write(version.text)


@versions_app.command("diff")
def versions_diff(a: Annotated[int, typer.Argument(help="older version")],
                  b: Annotated[int, typer.Argument(help="newer version")],
                  name: NameOpt = None, store: StoreOpt = None,
                  reach: Annotated[bool, typer.Option(
                      "--reach", help="what becomes reachable and unreachable")] = False,
                  fail_on_new_reach: Annotated[bool, typer.Option(
                      "--fail-on-new-reach", help="with --reach: exit 1 if B opens anything")
                  ] = False, output: OutputOpt = "table") -> None:
    """Unified diff of two versions' YAML (`--reach`: of what they let through)."""
    name = config.cluster(name)
    if reach or fail_on_new_reach:
        return _reach(a, b, name, store, output, fail_on_new_reach)
    with _store(store) as st:
        sys.stdout.write(st.diff(name, a, b))


def _reach(a: int, b: int, name: str, store: str | None, output: str,
           fail_on_new: bool) -> None:
    """`versions diff A B --reach`: what version B makes reachable and unreachable."""
    from egressguard.analysis.cells import TooLarge
    from egressguard.analysis.reach import reach_diff
    from egressguard.catalog import references

    with _store(store) as st:
        old, new = st.version(name, a).policy, st.version(name, b).policy
    try:
        result = reach_diff(old, new, references())
    except TooLarge as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output == "json":
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        typer.echo(result.text(), nl=False)
    if fail_on_new and result.opened:
        raise typer.Exit(1)


def rollback(number: Annotated[int, typer.Argument(help="version to restore")],
             name: NameOpt = None, store: StoreOpt = None,
             output: OutputOpt = "table") -> None:
    """Make a new version with the content of version NUMBER."""
    name = config.cluster(name)
    with _store(store) as st:
        version = st.rollback(name, number, _user())
        resource = to_arm(version)
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


def _print_new_token(token: str, info: Any, output: str) -> None:
    if output == "json":
        typer.echo(json.dumps({**info.as_dict(), "token": token}))
    else:
        expires = info.expires_at.isoformat(timespec="seconds") if info.expires_at else "?"
        typer.echo(f"token {info.id} ({info.name}, {info.role}, expires {expires}); store "
                   f"it now, it is not shown again:\n{token}")


@token_app.command("create")
def token_create(name: Annotated[str, typer.Option(help="who or what uses it")],
                 role: Annotated[str, typer.Option(help="admin, operator, viewer, auditor")],
                 expires: ExpiresOpt = "90d", store: StoreOpt = None,
                 output: OutputOpt = "table") -> None:
    """Create a token (valid 90 days unless --expires says otherwise); it is printed once
    and cannot be shown again."""
    lifetime = _lifetime(expires)
    with _store(store) as st:
        token, info = st.create_token(name, role, _user(), lifetime=lifetime)
    _print_new_token(token, info, output)


@token_app.command("list")
def token_list(store: StoreOpt = None, output: OutputOpt = "table",
               all_: Annotated[bool, typer.Option("--all", help="include revoked")] = False
               ) -> None:
    with _store(store) as st:
        rows = [t.as_dict() for t in st.tokens(include_revoked=all_)]
    table = Table("Id", "Name", "Role", "Created by", "Created", "Expires", "Revoked")
    for r in rows:
        table.add_row(str(r["id"]), _cell(r["name"]), r["role"], _cell(r["created_by"]),
                      r["created_at"], r["expires_at"] or "", r["revoked_at"] or "")
    _emit(rows, output, table)


@token_app.command("revoke")
def token_revoke(ident: Annotated[str, typer.Argument(help="token id or name")],
                 store: StoreOpt = None) -> None:
    with _store(store) as st:
        revoked = st.revoke_token(ident)
    typer.echo(f"revoked {len(revoked)} token(s)")


@token_app.command("rotate")
def token_rotate_named(ident: Annotated[str, typer.Argument(help="token name or id")],
                       expires: ExpiresOpt = "90d", store: StoreOpt = None,
                       output: OutputOpt = "table") -> None:
    """Issue a new secret for a token (same name and role) and revoke the old one."""
    lifetime = _lifetime(expires)
    with _store(store) as st:
        token, info = st.rotate_token(ident, _user(), lifetime=lifetime)
    _print_new_token(token, info, output)


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
    store: StoreOpt = None,
) -> None:
    """Run the control-plane REST API alone."""
    import uvicorn

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
        uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command()(mgmt)
    app.add_typer(cluster_app, name="cluster")
    app.add_typer(versions_app, name="versions")
    app.command()(rollback)
    app.add_typer(token_app, name="token")
    app.command()(api)
