"""`egressguard serve`: run the enforcing gateway.

The composition is deliberately flat: a policy source fills a `SnapshotHolder`, the
`Gateway` enforces whatever the holder holds, and events go to a sink. The control plane
(store + REST API) plugs in by swapping the same holder and by supplying the sink.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from egressguard.audit.events import EventSink, NullSink
from egressguard.engine import CompileError
from egressguard.engine.holder import SnapshotHolder
from egressguard.gateway import (
    Gateway,
    Limits,
    PolicyFile,
    Resolver,
    load_active,
    parse_hosts_file,
    parse_resolve,
)
from egressguard.policy import PolicyError

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "gateway" / "default_policy.yaml"
log = logging.getLogger("egressguard.gateway")


def serve(
    listen: Annotated[str, typer.Option(help="address:port to listen on")] = "127.0.0.1:3128",
    policy: Annotated[Path | None, typer.Option(
        help="policy file (YAML/JSON), reloaded on change or SIGHUP "
             "(default: the built-in deny-all policy)")] = None,
    resolve: Annotated[list[str] | None, typer.Option(
        "--resolve", help="NAME=IP[,IP]: static address for a name (repeatable)")] = None,
    hosts_file: Annotated[Path | None, typer.Option(
        help="hosts(5)-format file of static addresses")] = None,
    system_resolver: Annotated[bool, typer.Option(
        help="fall back to the system resolver for names not given statically")] = True,
    report_only: Annotated[bool, typer.Option(
        help="permit everything; record what would have been denied")] = False,
    non_tls_443: Annotated[str, typer.Option(
        help="CONNECT to port 443 whose first bytes are not TLS: deny or allow")] = "deny",
    max_header_bytes: Annotated[int, typer.Option(help="request head size limit")] = 32768,
    header_timeout: Annotated[float, typer.Option(
        help="seconds to receive a request head (slowloris)")] = 10.0,
    idle_timeout: Annotated[float, typer.Option(
        help="seconds without traffic before a connection or tunnel is closed")] = 300.0,
    connect_timeout: Annotated[float, typer.Option(help="upstream connect seconds")] = 10.0,
    max_connections: Annotated[int, typer.Option(help="concurrent client connections")
                               ] = 4096,
    shutdown_deadline: Annotated[float, typer.Option(
        help="seconds open requests may finish after SIGTERM")] = 10.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the gateway: an HTTP/HTTPS forward proxy that enforces the policy."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        host, port = _listen_address(listen)
        if non_tls_443 not in ("deny", "allow"):
            raise ValueError("--non-tls-443 must be deny or allow")
        static = parse_resolve(resolve or [])
        if hosts_file is not None:
            for name, ips in parse_hosts_file(hosts_file).items():
                static.setdefault(name, []).extend(ips)
        path = policy or DEFAULT_POLICY
        active = load_active(path)
    except (PolicyError, CompileError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    mode: Literal["deny", "allow"] = "allow" if non_tls_443 == "allow" else "deny"
    limits = Limits(max_header_bytes=max_header_bytes, header_timeout=header_timeout,
                    idle_timeout=idle_timeout, connect_timeout=connect_timeout,
                    max_connections=max_connections, shutdown_deadline=shutdown_deadline,
                    non_tls_443=mode)
    holder = SnapshotHolder(active)
    gateway = Gateway(holder, _sink(), Resolver(static, system=system_resolver), limits,
                      report_only=report_only)
    _run(_serve(gateway, holder, PolicyFile(path, holder), host, port))


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {text!r}: expected address:port (port 0 picks one)")
    return host.strip("[]"), int(port)


def _sink() -> EventSink:
    """Where decisions go; the audit area supplies a durable sink."""
    return NullSink()


async def _serve(gateway: Gateway, holder: SnapshotHolder, policy_file: PolicyFile,
                 host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await gateway.start(host, port)
    policy_file.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, policy_file.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for addr, bound in gateway.addresses:
        typer.echo(f"egressguard: listening on {addr}:{bound} (HTTP proxy, CONNECT)")
    active = holder.active
    typer.echo(f"egressguard: policy {active.source} version {active.version}"
               f"{' (report-only)' if gateway.report_only else ''}")
    await stop.wait()
    typer.echo("egressguard: shutting down", err=True)
    policy_file.stop()
    await gateway.stop()


def _run(main: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main)  # type: ignore[arg-type]
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.command()(serve)
