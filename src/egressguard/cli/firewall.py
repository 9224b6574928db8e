"""`egressguard firewall render|apply|status|remove`: the network layer in the kernel.

Exit status: 0 done, 1 `status` found no egressguard table, 2 bad input or nft failure.
"""

from __future__ import annotations

import pwd
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from egressguard.catalog import references
from egressguard.engine import CompileError
from egressguard.engine.request import split_host_port
from egressguard.firewall import Options, Ruleset, build_ruleset, render
from egressguard.firewall.nft import FirewallError, apply, remove, status
from egressguard.source import SourceError, follow, policy_in_force

firewall_app = typer.Typer(
    no_args_is_help=True,
    help="Kernel (nftables) enforcement of the policy's network rules; fail closed.")
EXIT_OK, EXIT_ABSENT, EXIT_ERROR = 0, 1, 2

PolicyOpt = Annotated[Path | None, typer.Option(
    "--policy", "--file", "-f", help="policy file (YAML or JSON)")]
ClusterOpt = Annotated[str | None, typer.Option(help="a stored cluster's current policy")]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="EGRESSGUARD_STORE", help="store URL for --cluster")]
TableOpt = Annotated[str, typer.Option(help="nft table name (family inet)")]
NetnsOpt = Annotated[str | None, typer.Option(help="network namespace (ip netns) to act in")]
PortsOpt = Annotated[list[int] | None, typer.Option(
    "--gateway-port", help="loopback TCP/UDP port of the local proxy or DNS filter "
                           "(repeat; default 3128 and 5353)")]
GatewayOpt = Annotated[list[str] | None, typer.Option(
    "--gateway", help="ip:port of a proxy elsewhere, reachable over TCP (repeat)")]
DnsOpt = Annotated[list[str] | None, typer.Option(
    "--dns", help="ip[:port] of a resolver or DNS filter, reachable over UDP/TCP (repeat)")]
UserOpt = Annotated[list[str] | None, typer.Option(
    "--exempt-user", help="user (name or uid) whose own traffic is not filtered, e.g. the "
                          "gateway's when it runs in the same namespace (repeat)")]
LoopbackOpt = Annotated[bool, typer.Option(
    help="accept all loopback traffic (the engine's address guard refuses it)")]
ResolveOpt = Annotated[bool, typer.Option(
    help="resolve FQDN network-rule destinations now and allow their addresses (off: "
         "FQDNs are left to the proxy and DNS filter, as the engine does for flows)")]
HookOpt = Annotated[list[str] | None, typer.Option(
    "--hook", help="netfilter hooks to filter (repeat; default output and forward)")]


def _bad(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def _endpoint(text: str, default_port: int | None) -> tuple[str, int]:
    import ipaddress

    host, port_text = split_host_port(text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _bad(f"{text!r}: expected an IP address (L3 rules cannot use names)"
                   ) from None
    if not port_text and default_port is None:
        raise _bad(f"{text!r}: expected ip:port")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise _bad(f"{text!r}: bad port")
    return str(ip), int(port_text) if port_text else int(default_port or 0)


def _uid(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise _bad(f"unknown user {user!r}") from None


def _resolve(name: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        typer.echo(f"warning: {name}: {exc}; no addresses allowed for it", err=True)
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _options(table: str, gateway_port: list[int] | None, gateway: list[str] | None,
             dns: list[str] | None, exempt_user: list[str] | None, allow_loopback: bool,
             resolve_fqdns: bool, hook: list[str] | None) -> Options:
    hooks = tuple(hook or ("output", "forward"))
    if any(h not in ("output", "forward") for h in hooks):
        raise _bad("--hook must be output or forward")
    return Options(
        table=table, hooks=hooks,
        gateway_ports=tuple(gateway_port) if gateway_port is not None else (3128, 5353),
        gateway_addresses=tuple(_endpoint(g, None) for g in gateway or ()),
        allow_dns_to=tuple(_endpoint(d, 53) for d in dns or ()),
        exempt_uids=tuple(_uid(u) for u in exempt_user or ()),
        allow_loopback=allow_loopback, resolve=_resolve if resolve_fqdns else None)


def _ruleset(policy: Path | None, cluster: str | None, store: str | None,
             options: Options) -> tuple[Ruleset, str]:
    if policy is not None and cluster is not None:
        raise _bad("give --policy or --cluster, not both")
    try:
        loaded, source = policy_in_force(policy, cluster, store)
        return build_ruleset(loaded, references(), options), source
    except (SourceError, CompileError) as exc:
        raise _bad(str(exc)) from None


@firewall_app.command("render")
def render_command(policy: PolicyOpt = None, cluster: ClusterOpt = None,
                   store: StoreOpt = None, table: TableOpt = "egressguard",
                   gateway_port: PortsOpt = None, gateway: GatewayOpt = None,
                   dns: DnsOpt = None, exempt_user: UserOpt = None,
                   allow_loopback: LoopbackOpt = False, resolve_fqdns: ResolveOpt = False,
                   hook: HookOpt = None,
                   out: Annotated[Path | None, typer.Option(
                       "--out", help="write here instead of stdout")] = None,
                   ) -> None:
    """Print the nftables ruleset for a policy (feed it to `nft -f`)."""
    options = _options(table, gateway_port, gateway, dns, exempt_user, allow_loopback,
                       resolve_fqdns, hook)
    ruleset, source = _ruleset(policy, cluster, store, options)
    text = f"# policy: {source}\n" + render(ruleset)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _bad(f"{out}: {exc}") from None
    typer.echo(f"wrote {out} ({_summary(ruleset)})", err=True)


def _summary(ruleset: Ruleset) -> str:
    from egressguard.firewall.watch import summary

    return summary(ruleset)


@firewall_app.command("apply")
def apply_command(policy: PolicyOpt = None, cluster: ClusterOpt = None,
                  store: StoreOpt = None, table: TableOpt = "egressguard",
                  netns: NetnsOpt = None, gateway_port: PortsOpt = None,
                  gateway: GatewayOpt = None, dns: DnsOpt = None,
                  exempt_user: UserOpt = None, allow_loopback: LoopbackOpt = False,
                  resolve_fqdns: ResolveOpt = False, hook: HookOpt = None,
                  watch: Annotated[bool, typer.Option(
                      help="keep running: re-apply within 1 s of every policy change and "
                           "keep DNS-learned address sets for FQDN network-rule "
                           "destinations (timeouts bounded by the TTL)")] = False,
                  resolver: Annotated[str | None, typer.Option(
                      help="with --watch: DNS server ip[:port] for FQDN destinations "
                           "(default: the first --dns, else /etc/resolv.conf's)")] = None,
                  hosts: Annotated[Path | None, typer.Option(
                      help="with --watch: hosts-style file (IP name...) consulted before "
                           "DNS, re-read at each lookup")] = None) -> None:
    """Load the ruleset into the kernel atomically (replaces the previous one)."""
    options = _options(table, gateway_port, gateway, dns, exempt_user, allow_loopback,
                       resolve_fqdns, hook)
    if watch:
        if policy is not None and cluster is not None:
            raise _bad("give --policy or --cluster, not both")
        _watch(policy, cluster, store, options, netns, resolver, hosts)
        return
    if resolver is not None or hosts is not None:
        raise _bad("--resolver and --hosts need --watch (use --resolve-fqdns for one look)")
    ruleset, source = _ruleset(policy, cluster, store, options)
    try:
        apply(f"# policy: {source}\n" + render(ruleset), netns)
    except FirewallError as exc:
        raise _bad(str(exc)) from None
    for note in ruleset.notes:
        typer.echo(f"note: {note}", err=True)
    where = f" in netns {netns}" if netns else ""
    typer.echo(f"applied {source}{where}: table inet {table}, {_summary(ruleset)}")


def _resolv_conf_server() -> tuple[str, int] | None:
    try:
        lines = Path("/etc/resolv.conf").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            return fields[1], 53
    return None


def _watch(policy: Path | None, cluster: str | None, store: str | None, options: Options,
           netns: str | None, resolver: str | None, hosts: Path | None) -> None:
    import logging
    import signal

    from egressguard.firewall.nft import nft_binary, require_root
    from egressguard.firewall.resolve import DnsLookup, HostsLookup, Lookup, Lookups
    from egressguard.firewall.watch import FirewallWatch

    server = (_endpoint(resolver, 53) if resolver is not None
              else options.allow_dns_to[0] if options.allow_dns_to else _resolv_conf_server())
    lookups: list[Lookup] = [HostsLookup(hosts)] if hosts is not None else []
    if server is not None:
        lookups.append(DnsLookup(server))
    try:
        require_root()
        nft_binary()
        live = follow(policy, cluster, store)
    except (SourceError, FirewallError) as exc:
        raise _bad(str(exc)) from None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    watcher = FirewallWatch(live.holder, options, Lookups(lookups), refs=references,
                            netns=netns)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: watcher.stop())
    signal.signal(signal.SIGHUP, lambda *_: live.reload())
    try:
        watcher.run()
    finally:
        live.stop()
    typer.echo("egressguard firewall: watch stopped (the ruleset stays in force)", err=True)


@firewall_app.command("status")
def status_command(table: TableOpt = "egressguard", netns: NetnsOpt = None) -> None:
    """Show the installed table with its counters (exit 1 when none is installed)."""
    try:
        shown = status(table, netns)
    except FirewallError as exc:
        raise _bad(str(exc)) from None
    if shown is None:
        typer.echo(f"no table inet {table}: the network layer is not enforced in the "
                   "kernel", err=True)
        raise typer.Exit(EXIT_ABSENT)
    sys.stdout.write(shown)


@firewall_app.command("remove")
def remove_command(table: TableOpt = "egressguard", netns: NetnsOpt = None) -> None:
    """Delete the table (the kernel then filters nothing for egressguard)."""
    try:
        removed = remove(table, netns)
    except FirewallError as exc:
        raise _bad(str(exc)) from None
    typer.echo(f"removed table inet {table}" if removed else f"no table inet {table}")


def register(app: typer.Typer) -> None:
    app.add_typer(firewall_app, name="firewall")
