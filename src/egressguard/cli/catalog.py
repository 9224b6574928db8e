"""`egressguard catalog|profile|servicetags`: the requirement catalogs from the command line.

Thin I/O around `egressguard.catalog`: argument parsing, tables or JSON out, files written
atomically. Bad input (unknown catalog, cloud, region, feature, tag, or a missing value)
exits 2 with a message that lists the valid choices.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from egressguard.catalog import accounts, fqdn_tags, storage_aliases
from egressguard.catalog.model import CLOUDS, Catalog, CatalogError, catalogs, get_catalog
from egressguard.catalog.profile import Options, Plan, plan_aks, plan_aml, render
from egressguard.catalog.servicetags import (
    import_file,
    load_stored,
    lookup,
)
from egressguard.cli.output import Format, OutputOpt, emit, is_data
from egressguard.policy import PolicyError, load_policy_text
from egressguard.policy.defaults import IMMUTABLE_CALLOUT_ROWS

EXIT_BAD_INPUT = 2

catalog_app = typer.Typer(no_args_is_help=True, help="Browse the shipped requirement catalogs.")
profile_app = typer.Typer(no_args_is_help=True,
                          help="Generate the least policy a deployment needs.")
servicetags_app = typer.Typer(no_args_is_help=True,
                              help="Import and inspect Azure service tags.")




def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, Console().width)).print(table)


# -- catalog -------------------------------------------------------------------------------


@catalog_app.command("list")
def catalog_list(output: OutputOpt = Format.TABLE) -> None:
    """List the shipped catalogs, FQDN tags and storage aliases."""
    entries: list[dict[str, Any]] = [
               {"name": c.name, "title": c.title, "source": c.source, "clouds": list(c.clouds),
                "rows": len(c.rows()) or (len(IMMUTABLE_CALLOUT_ROWS)
                                          if c.name == "data-explorer" else 0),
                "features": [f for f, spec in c.features.items() if spec.get("kind") != "base"]}
               for c in catalogs().values()]
    tags = {name: len(patterns) for name, patterns in fqdn_tags().items()}
    aliases = {name: list(globs) for name, globs in storage_aliases().items()}
    if is_data(output):
        emit({"catalogs": entries, "fqdn_tags": tags,
                               "storage_aliases": aliases}, output)
        return
    _print_table("Catalogs", ["name", "title", "source", "clouds", "rows", "features"],
                 [[e["name"], e["title"], e["source"], ",".join(e["clouds"]), str(e["rows"]),
                   ", ".join(e["features"])] for e in entries])
    _print_table("FQDN tags (application rules: fqdn_tags)", ["tag", "patterns"],
                 [[k, str(v)] for k, v in tags.items()])
    _print_table("Storage aliases (service endpoint policies)", ["alias", "account globs"],
                 [[k, ", ".join(v) or "(none known: listed accounts only)"]
                  for k, v in aliases.items()])


def _row_dicts(catalog: Catalog, cloud: str | None) -> list[dict[str, Any]]:
    out = []
    for section in catalog.sections:
        for row in section.rows:
            if cloud is not None and cloud not in row.clouds:
                continue
            item: dict[str, Any] = {
                "section_id": section.id, "section": section.section,
                "feature": section.feature, "kind": section.kind,
                "clouds": list(row.clouds), "row_id": row.id}
            if section.tab:
                item["tab"] = section.tab
            if row.destinations:
                item["destinations"] = [
                    {"form": d.form, "value": d.value, **({"note": d.note} if d.note else {})}
                    for d in row.destinations]
            else:
                item["targets"] = ({cloud: list(row.targets_for(cloud))} if cloud
                                   else {c: list(h) for c, h in row.targets.items()})
            item.update(protocol=row.protocol, protocol_stated=row.protocol_stated,
                        port=row.port, purpose=row.purpose, condition=row.condition)
            for key in ("caveat", "example"):
                if getattr(row, key):
                    item[key] = getattr(row, key)
            out.append(item)
    return out


def _destination_text(item: dict[str, Any]) -> str:
    if "destinations" in item:
        return " | ".join(d["value"] for d in item["destinations"])
    return "; ".join(f"{c}: {', '.join(h)}" if len(item["targets"]) > 1 else ", ".join(h)
                     for c, h in item["targets"].items())


@catalog_app.command("show")
def catalog_show(
    name: Annotated[str, typer.Argument(help="catalog name (see `catalog list`)")],
    cloud: Annotated[str | None, typer.Option(help="public, china or usgov")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Show one catalog's rows, optionally for one cloud."""
    catalog = get_catalog(name)
    if cloud is not None and cloud not in catalog.clouds:
        raise CatalogError(f"unknown cloud {cloud!r} for {name}; choose one of: "
                           f"{', '.join(catalog.clouds)}")
    rows = _row_dicts(catalog, cloud)
    extra: dict[str, Any] = {}
    if catalog.name == "data-explorer":
        extra["immutable_callouts"] = [
            {"CalloutType": t, "CalloutUriRegex": r, "CanCall": c}
            for t, r, c in IMMUTABLE_CALLOUT_ROWS]
        extra["notes"] = catalog.raw.get("notes", [])
    if "service_endpoint_policy" in catalog.raw:
        sep = dict(catalog.raw["service_endpoint_policy"])
        sep["alias_globs"] = {a: list(storage_aliases().get(a, ())) for a in sep["aliases"]}
        extra["service_endpoint_policy"] = sep
    if "inbound_note" in catalog.raw:
        extra["inbound_note"] = catalog.raw["inbound_note"]
    if is_data(output):
        emit({"catalog": catalog.name, "title": catalog.title,
                               "source": catalog.source, "cloud": cloud, "rows": rows,
                               **extra}, output)
        return
    title = f"{catalog.title} ({catalog.source})" + (f", cloud {cloud}" if cloud else "")
    if rows:
        _print_table(title, ["section", "feature", "destination", "proto", "port",
                             "condition", "purpose"],
                     [[r["section_id"] + (f" ({r['tab']})" if "tab" in r else ""),
                       r["feature"], _destination_text(r),
                       r["protocol"] + ("" if r["protocol_stated"] else "?"),
                       str(r["port"]), r["condition"], r["purpose"]] for r in rows])
    if "immutable_callouts" in extra:
        _print_table(title, ["CalloutType", "CalloutUriRegex", "CanCall"],
                     [[c["CalloutType"], c["CalloutUriRegex"], str(c["CanCall"]).lower()]
                      for c in extra["immutable_callouts"]])
    for note in extra.get("notes", []):
        typer.echo(f"note: {note}")
    if "service_endpoint_policy" in extra:
        sep = extra["service_endpoint_policy"]
        typer.echo(f"service endpoint policy ({sep['section']}): default storage account + "
                   f"aliases {', '.join(sep['aliases'])}; {sep['note']}")
        for alias, globs in sep["alias_globs"].items():
            typer.echo(f"  {alias} -> {', '.join(globs) or '(no accounts known)'}")
    if "inbound_note" in extra:
        typer.echo(f"note: {extra['inbound_note']}")
    if rows and any(not r["protocol_stated"] for r in rows):
        typer.echo("proto?: the document states only the port; the protocol is assumed")


# -- profile -------------------------------------------------------------------------------


def _features(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))


def _emit(plan: Plan, out: Path | None) -> None:
    text = render(plan)
    try:
        load_policy_text(text, "<generated>")
    except PolicyError as exc:  # a generator bug: never hand out a file that will not load
        _fail(f"generated policy does not validate (please report): {exc}")
    for warning in plan.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if out is None:
        sys.stdout.write(text)
        return
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    typer.echo(f"wrote {out}", err=True)


def _command() -> str:
    return "egressguard " + " ".join(
        a if a.replace("-", "").replace(",", "").replace(".", "").replace(
            "=", "").replace("/", "").replace(":", "").isalnum() else json.dumps(a)
        for a in sys.argv[1:])


OutOpt = Annotated[Path | None, typer.Option("--out", help="write the policy here")]
RegionOpt = Annotated[str, typer.Option(help="Azure region, e.g. westeurope")]


@profile_app.command("aks")
def profile_aks(
    region: RegionOpt,
    cloud: Annotated[str, typer.Option(help="public, china or usgov")] = "public",
    features: Annotated[str | None, typer.Option(
        help="comma-separated: ubuntu-updates, gpu, windows, workload-identity, defender, "
             "keyvault-csi, monitor, azure-policy, cost-analysis, extensions, "
             "api-server-access, konnectivity, legacy-nodes")] = None,
    private_cluster: Annotated[bool, typer.Option(
        "--private-cluster", help="private cluster (drops rows not required for it)")] = False,
    api_server_ip: Annotated[str | None, typer.Option(
        help="the API server's public IP (narrows the tunnel rules)")] = None,
    custom_dns: Annotated[list[str] | None, typer.Option(
        help="custom DNS server IP (repeatable); adds the UDP 53 rule")] = None,
    out: OutOpt = None,
) -> None:
    """Policy for an AKS cluster, restricted to what it needs ("Outbound network and
    FQDN rules for Azure Kubernetes Service (AKS) clusters")."""
    dns = tuple(ip.strip() for v in (custom_dns or []) for ip in v.split(",") if ip.strip())
    plan = plan_aks(Options(cloud=cloud, region=region, features=_features(features),
                            private_cluster=private_cluster, api_server_ip=api_server_ip,
                            custom_dns=dns, known_tags=load_stored(), command=_command()))
    _emit(plan, out)


@profile_app.command("aml")
def profile_aml(
    region: RegionOpt,
    storage_account: Annotated[list[str] | None, typer.Option(
        help="workspace default storage account, name or resource id (repeatable)")] = None,
    cloud: Annotated[str, typer.Option(
        help="public (the only cloud the Azure Machine Learning guide covers)")] = "public",
    mode: Annotated[str, typer.Option(
        help="firewall (FQDN rules) or servicetag (network rules to service tags)")
    ] = "firewall",
    features: Annotated[str | None, typer.Option(
        help="comma-separated: curated-environments, studio, firewall-service-endpoint")
    ] = None,
    out: OutOpt = None,
) -> None:
    """Policy for Azure Machine Learning compute with its storage policy ("Configure data
    exfiltration prevention")."""
    plan = plan_aml(Options(cloud=cloud, region=region, features=_features(features),
                            mode=mode, storage_accounts=tuple(storage_account or ()),
                            known_tags=load_stored(), command=_command()))
    _emit(plan, out)


# -- service tags --------------------------------------------------------------------------


@servicetags_app.command("import")
def servicetags_import(
    file: Annotated[Path, typer.Argument(help="ServiceTags_<Cloud>_<date>.json")],
) -> None:
    """Validate a downloaded service-tag file and make it the one in use."""
    stored, count = import_file(file)
    typer.echo(f"imported {count} service tags into {stored}")


@servicetags_app.command("show")
def servicetags_show(
    tag: Annotated[str, typer.Argument(help="e.g. AzureCloud.westeurope, AzureMonitor")],
    output: OutputOpt = Format.TABLE,
) -> None:
    """Show one imported service tag and its address prefixes."""
    found = lookup(tag)
    if is_data(output):
        emit({"name": found.name, "region": found.region,
                               "systemService": found.system_service,
                               "addressPrefixes": list(found.prefixes)}, output)
        return
    typer.echo(f"name:          {found.name}\nregion:        {found.region or '(global)'}\n"
               f"systemService: {found.system_service or '-'}\n"
               f"prefixes:      {len(found.prefixes)}")
    for prefix in found.prefixes:
        typer.echo(f"  {prefix}")


# -- storage account inventory -------------------------------------------------------------

accounts_app = typer.Typer(no_args_is_help=True, help=(
    "The storage accounts egressguard knows: resource-group and subscription entries of "
    "service endpoint policies match them, and an alias covers the ones listed for it."))
AliasOpt = Annotated[list[str] | None, typer.Option(
    "--alias", help="the alias whose Microsoft-managed accounts these are, e.g. "
                    "/services/Azure/MachineLearning (repeatable)")]


@accounts_app.command("import")
def accounts_import(
    file: Annotated[Path, typer.Argument(help="ARM resource list JSON (az resource list, "
                                              "az storage account list)")],
    alias: AliasOpt = None,
) -> None:
    """Add (or update) the storage accounts of an ARM resource list."""
    count, stored = accounts.import_arm(file, list(alias or []))
    typer.echo(f"imported {count} storage account{'s' if count != 1 else ''} into {stored}")


@accounts_app.command("add")
def accounts_add(
    name: Annotated[str, typer.Argument(help="account name (3-24 lower-case letters, digits)")],
    resource_id: Annotated[str, typer.Option("--id", help="its resource id")],
    alias: AliasOpt = None,
) -> None:
    """Add one storage account."""
    stored = accounts.add(name, resource_id, list(alias or []))
    typer.echo(f"added {name.strip().lower()} to {stored}")


@accounts_app.command("remove")
def accounts_remove(name: Annotated[str, typer.Argument()]) -> None:
    """Remove one storage account."""
    accounts.remove(name)
    typer.echo(f"removed {name.strip().lower()}")


@accounts_app.command("list")
def accounts_list(output: OutputOpt = Format.TABLE) -> None:
    """List the known storage accounts."""
    known = accounts.load()
    if is_data(output):
        emit(known, output)
        return
    _print_table("storage accounts", ["Account", "Resource id", "Aliases"],
                 [[n, e["id"], ", ".join(e["aliases"])] for n, e in sorted(known.items())])


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(profile_app, name="profile")
    app.add_typer(servicetags_app, name="servicetags")
    app.add_typer(accounts_app, name="storage-accounts")


__all__ = ["CLOUDS", "register"]
