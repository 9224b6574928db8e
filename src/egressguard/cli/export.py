"""`egressguard export --format F`: the policy in force, compiled for another enforcer.

Exit status: 0 written (warnings, if any, on stderr and in the output's header), 1 refused
by `--strict` because the target cannot express part of the policy, 2 bad input.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Annotated

import typer

from egressguard.export import FORMATS, Export, ExportError

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


def _bad(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def _endpoint(text: str, default_port: int) -> tuple[str, int]:
    from egressguard.engine.request import split_host_port

    host, port = split_host_port(text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _bad(f"{text!r}: expected ip[:port]") from None
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise _bad(f"{text!r}: bad port")
    return str(ip), int(port) if port else default_port


def _identities(items: list[str]) -> dict[str, dict[str, str]]:
    """`CIDR=key=value[,key=value]` -> {CIDR: labels}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        cidr, _, labels = item.partition("=")
        try:
            net = str(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise _bad(f"--identity {item!r}: expected CIDR=key=value[,key=value]") from None
        pairs = [p.partition("=") for p in labels.split(",") if p]
        if not pairs or any(not k or not sep for k, sep, _ in pairs):
            raise _bad(f"--identity {item!r}: expected CIDR=key=value[,key=value]")
        out[net] = {k.strip(): v.strip() for k, _, v in pairs}
    return out


def _build(fmt: str, policy_path: Path | None, cluster: str | None, store: str | None,
           namespace: str | None, identity: list[str], gateway: list[str],
           dns: list[str]) -> Export:
    from egressguard.analysis.sources import SourceError, from_file, in_force
    from egressguard.catalog import references
    from egressguard.engine import CompileError

    if policy_path is not None and cluster is not None:
        raise _bad("give --policy or --cluster, not both")
    try:
        policy, source = (from_file(policy_path) if policy_path is not None
                          else in_force(None, cluster, store))
        refs = references()
        if fmt == "yaml":
            from egressguard.export.policyfile import export_yaml
            return export_yaml(policy, refs, source)
        if fmt == "squid":
            from egressguard.export.squid import export_squid
            return export_squid(policy, refs, source)
        if fmt == "cilium":
            from egressguard.export.cilium import export_cilium
            return export_cilium(policy, refs, source, namespace=namespace,
                                 identities=_identities(identity))
        if fmt == "kubernetes":
            from egressguard.export.kubernetes import export_kubernetes
            return export_kubernetes(policy, refs, source, namespace=namespace or "default",
                                     identities=_identities(identity),
                                     gateway=[_endpoint(g, 3128) for g in gateway],
                                     dns=[_endpoint(d, 53) for d in dns])
        if fmt == "azure-firewall":
            from egressguard.export.azure import export_azure
            return export_azure(policy, refs, source)
        from egressguard.export.nftables import export_nftables
        return export_nftables(policy, refs, source)
    except (SourceError, CompileError, ExportError) as exc:
        raise _bad(str(exc).replace("\n", " ")) from None


def export_command(
        format: Annotated[str, typer.Option(
            "--format", help=f"target: {', '.join(FORMATS)}")] = "yaml",
        policy: Annotated[Path | None, typer.Option(
            "--policy", "--file", "-f", help="policy file (YAML or JSON)")] = None,
        cluster: Annotated[str | None, typer.Option(
            help="a stored cluster's current policy")] = None,
        store: Annotated[str | None, typer.Option(
            "--store", envvar="EGRESSGUARD_STORE", help="store URL for --cluster")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", help="write here instead of stdout")] = None,
        strict: Annotated[bool, typer.Option(
            help="refuse (exit 1) when the target cannot express part of the policy")
                          ] = False,
        namespace: Annotated[str | None, typer.Option(
            help="cilium: namespaced policy (default clusterwide); kubernetes: namespace")
                             ] = None,
        identity: Annotated[list[str] | None, typer.Option(
            help="cilium/kubernetes: CIDR=key=value[,key=value] maps a rule source to "
                 "endpoint labels (repeat)")] = None,
        gateway: Annotated[list[str] | None, typer.Option(
            help="kubernetes: ip[:port] of egressguard's proxy (default port 3128; "
                 "repeat)")] = None,
        dns: Annotated[list[str] | None, typer.Option(
            help="kubernetes: ip[:port] of egressguard's DNS filter (repeat)")] = None,
) -> None:
    """Compile the policy for another enforcer: squid, cilium, kubernetes,
    azure-firewall, nftables, or yaml (the policy file itself)."""
    fmt = format.strip().lower()
    if fmt not in FORMATS:
        raise _bad(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    exported = _build(fmt, policy, cluster, store, namespace, identity or [], gateway or [],
                      dns or [])
    for warning in exported.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if strict and exported.warnings:
        typer.echo(f"refused: {fmt} cannot express {len(exported.warnings)} part(s) of the "
                   "policy (--strict); nothing written", err=True)
        raise typer.Exit(EXIT_REFUSED)
    if out is None:
        sys.stdout.write(exported.text)
        return
    try:
        out.write_text(exported.text, encoding="utf-8")
    except OSError as exc:
        raise _bad(f"{out}: {exc}") from None
    typer.echo(f"wrote {out} ({fmt}, {len(exported.warnings)} warning(s))", err=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
