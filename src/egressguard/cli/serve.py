"""`egressguard serve`: run the enforcing gateway with its control plane and audit log.

The composition is deliberately flat: a policy source fills a `SnapshotHolder`, the
`Gateway` enforces whatever the holder holds, and decisions go to the audit sink.

* Policy source: the store's cluster (default: the embedded SQLite store, cluster
  `default`, which starts with the shipped deny-all policy) followed live through
  `PolicyFeed`; or, with `--policy FILE`, that file, reloaded on change or SIGHUP.
* The REST API (`127.0.0.1:8080` unless `--no-api`) runs in the same event loop, over
  the same store, so a change made through it is in force at once.
* The audit log is written to the store's database unless `--no-audit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from egressguard import logsetup
from egressguard.audit.events import EventSink, NullSink
from egressguard.engine import CompileError
from egressguard.engine.holder import SnapshotHolder
from egressguard.gateway import Gateway, Limits, Resolver, parse_hosts_file, parse_resolve
from egressguard.logsetup import LogFormat
from egressguard.policy import PolicyError
from egressguard.policyfile import PolicyFileWatcher, load_active

if TYPE_CHECKING:
    from egressguard.audit.log import AuditLog
    from egressguard.control.runtime import PolicyFeed
    from egressguard.store import Store

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "gateway" / "default_policy.yaml"
log = logging.getLogger("egressguard.gateway")


def serve(
    listen: Annotated[str, typer.Option(help="address:port to listen on")] = "127.0.0.1:3128",
    policy: Annotated[Path | None, typer.Option(
        help="enforce this policy file (YAML/JSON), reloaded on change or SIGHUP, instead "
             "of the store's cluster")] = None,
    store: Annotated[str | None, typer.Option(
        envvar="EGRESSGUARD_STORE",
        help="store URL: sqlite:///path or postgresql://... (default: the embedded SQLite "
             "file in the data home; see `egressguard config show`)")] = None,
    cluster: Annotated[str | None, typer.Option(
        help="the store cluster whose policy to enforce (default: the configured cluster, "
             "see `egressguard config show`)")] = None,
    api: Annotated[bool, typer.Option(help="serve the REST API in the same process")] = True,
    api_listen: Annotated[str, typer.Option(help="address:port of the REST API")
                          ] = "127.0.0.1:8080",
    allow_cidr: Annotated[list[str] | None, typer.Option(
        help="client CIDR allowed to reach the API (repeatable; default any)")] = None,
    audit: Annotated[bool, typer.Option(help="record every decision in the audit log")
                     ] = True,
    audit_writer: Annotated[str, typer.Option(
        help="process (seal and write in a child process) or thread")] = "process",
    audit_max_age: Annotated[str | None, typer.Option(
        help="prune audit records older than this (e.g. 30d, 12h)")] = None,
    audit_max_rows: Annotated[int | None, typer.Option(
        help="keep at most this many audit records")] = None,
    exfil_threshold: Annotated[int | None, typer.Option(
        help="warn when bytes sent to one destination within --exfil-window exceed this")
    ] = None,
    exfil_window: Annotated[str, typer.Option(help="window of --exfil-threshold")] = "1h",
    audit_timeout: Annotated[float, typer.Option(
        help="seconds a refusal waits for its audit record to be durable (then refuses "
             "anyway and logs it)")] = 5.0,
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
        help="seconds to receive a request head, from accept for the first (slowloris, "
             "silent sockets)")] = 10.0,
    idle_timeout: Annotated[float, typer.Option(
        help="seconds without traffic before a connection or tunnel is closed")] = 300.0,
    connect_timeout: Annotated[float, typer.Option(help="upstream connect seconds")] = 10.0,
    response_timeout: Annotated[float, typer.Option(
        help="seconds an upstream may take to send its response head (then 504)")] = 60.0,
    max_response_header_bytes: Annotated[int, typer.Option(
        help="upstream response head size limit (then 502)")] = 65536,
    max_connections: Annotated[int, typer.Option(help="concurrent client connections")
                               ] = 4096,
    max_connections_per_source: Annotated[int, typer.Option(
        help="concurrent client connections from one address")] = 256,
    shutdown_deadline: Annotated[float, typer.Option(
        help="seconds open requests may finish after SIGTERM")] = 10.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_format: Annotated[LogFormat, typer.Option(
        case_sensitive=False, help="text, or json: one object per line")] = LogFormat.TEXT,
) -> None:
    """Run the gateway: an HTTP/HTTPS forward proxy that enforces the policy."""
    logsetup.configure_or_exit(log_level, log_format)
    from egressguard import config

    cluster = config.cluster(cluster)
    parts = _Parts()
    try:
        host, port = _listen_address(listen)
        api_address = _listen_address(api_listen) if api else None
        if non_tls_443 not in ("deny", "allow"):
            raise ValueError("--non-tls-443 must be deny or allow")
        if audit_writer not in ("process", "thread"):
            raise ValueError("--audit-writer must be process or thread")
        static = parse_resolve(resolve or [])
        if hosts_file is not None:
            for name, ips in parse_hosts_file(hosts_file).items():
                static.setdefault(name, []).extend(ips)
        parts.open(store, cluster, policy, need_store=api or audit or policy is None)
        if audit:
            parts.open_audit(audit_writer, audit_max_age, audit_max_rows, exfil_threshold,
                             exfil_window)
    except (PolicyError, CompileError, ValueError, OSError) as exc:
        parts.close()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    mode: Literal["deny", "allow"] = "allow" if non_tls_443 == "allow" else "deny"
    limits = Limits(max_header_bytes=max_header_bytes, header_timeout=header_timeout,
                    idle_timeout=idle_timeout, connect_timeout=connect_timeout,
                    response_timeout=response_timeout,
                    max_response_header_bytes=max_response_header_bytes,
                    max_connections=max_connections,
                    max_connections_per_source=max_connections_per_source,
                    shutdown_deadline=shutdown_deadline,
                    non_tls_443=mode, audit_timeout=audit_timeout)
    assert parts.holder is not None
    gateway = Gateway(parts.holder, parts.sink, Resolver(static, system=system_resolver),
                      limits, report_only=report_only, cluster=cluster)
    try:
        _run(_serve(gateway, parts, host, port, api_address, allow_cidr or None))
    finally:
        parts.close()


@dataclass
class _Parts:
    """What `serve` opens before the event loop starts, closed in reverse on the way out."""

    store: Store | None = None
    feed: PolicyFeed | None = None
    policy_file: PolicyFileWatcher | None = None
    holder: SnapshotHolder | None = None
    sink: EventSink = NullSink()  # noqa: RUF009 - stateless default
    audit_log: AuditLog | None = None

    def open(self, store_url: str | None, cluster: str, policy: Path | None,
             need_store: bool) -> None:
        if need_store:
            from egressguard.store import StoreError, open_store

            try:
                self.store = open_store(store_url)
            except StoreError as exc:
                raise ValueError(f"cannot open the store: {exc}") from None
        if policy is not None:
            self.holder = SnapshotHolder(load_active(policy))
            self.policy_file = PolicyFileWatcher(policy, self.holder)
            return
        from egressguard.control.runtime import PolicyFeed

        assert self.store is not None
        from egressguard.store import NotFound

        try:
            self.store.current(cluster)
        except NotFound:
            raise ValueError(f"cluster {cluster!r} does not exist in the store; create it "
                             f"with `egressguard cluster create {cluster}` (add --store URL "
                             "if the store is not the configured one)") from None
        except Exception as exc:
            raise ValueError(f"cluster {cluster!r}: {exc}") from None
        self.feed = PolicyFeed(self.store, cluster)
        self.holder = self.feed.start()

    def open_audit(self, writer: str, max_age: str | None, max_rows: int | None,
                   exfil_threshold: int | None, exfil_window: str) -> None:
        from egressguard.audit.compose import audit_sink
        from egressguard.audit.log import Retention
        from egressguard.audit.query import parse_duration

        assert self.store is not None
        retention = Retention(max_age_s=parse_duration(max_age) if max_age else None,
                              max_rows=max_rows)
        self.sink, self.audit_log = audit_sink(
            self.store.url.render_as_string(hide_password=False), retention=retention,
            exfil_threshold=exfil_threshold,
            exfil_window_s=parse_duration(exfil_window),
            writer="thread" if writer == "thread" else "process")

    def close(self) -> None:
        if self.policy_file is not None:
            self.policy_file.stop()
        if self.feed is not None:
            self.feed.stop()
        if self.audit_log is not None:
            self.audit_log.close()
        if self.store is not None:
            self.store.close()


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {text!r}: expected address:port (port 0 picks one)")
    return host.strip("[]"), int(port)


async def _serve(gateway: Gateway, parts: _Parts, host: str, port: int,
                 api_address: tuple[str, int] | None, allow_cidrs: list[str] | None) -> None:
    loop = asyncio.get_running_loop()
    await gateway.start(host, port)
    api_server, api_task = await _start_api(parts, api_address, allow_cidrs)
    if parts.policy_file is not None:
        parts.policy_file.start()
    stop = asyncio.Event()
    if parts.policy_file is not None:
        loop.add_signal_handler(signal.SIGHUP, parts.policy_file.reload)
    elif parts.feed is not None:
        loop.add_signal_handler(signal.SIGHUP, parts.feed.refresh)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for addr, bound in gateway.addresses:
        typer.echo(f"egressguard: listening on {addr}:{bound} (HTTP proxy, CONNECT)")
    if api_server is not None:
        api_host, api_port = api_server.servers[0].sockets[0].getsockname()[:2]
        typer.echo(f"egressguard: REST API on http://{api_host}:{api_port} "
                   "(OpenAPI at /openapi.json, metrics at /metrics)")
    assert parts.holder is not None
    active = parts.holder.active
    typer.echo(f"egressguard: policy {active.source} version {active.version}"
               f"{' (report-only)' if gateway.report_only else ''}")
    typer.echo(f"egressguard: audit log {'on' if parts.audit_log else 'off'}"
               + (f" ({parts.store.url.render_as_string(hide_password=True)})"
                  if parts.audit_log and parts.store else ""))
    await stop.wait()
    typer.echo("egressguard: shutting down", err=True)
    if parts.policy_file is not None:
        parts.policy_file.stop()
    await gateway.stop()
    if api_server is not None and api_task is not None:
        api_server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await api_task


async def _start_api(parts: _Parts, address: tuple[str, int] | None,
                     allow_cidrs: list[str] | None) -> tuple[Any, asyncio.Task[None] | None]:
    """Run the REST API in this event loop (the store and holder are shared in-process)."""
    if address is None or parts.store is None:
        return None, None
    import uvicorn

    from egressguard.control.api import create_app

    bootstrap = parts.store.ensure_bootstrap()
    if bootstrap:
        typer.echo("egressguard: bootstrap admin token (shown once; rotate with "
                   f"`egressguard token rotate-bootstrap`):\n{bootstrap}", err=True)
    assert parts.holder is not None
    cluster = parts.feed.cluster if parts.feed is not None else "default"
    app = create_app(parts.store, {cluster: parts.holder}, allow_cidrs=allow_cidrs)
    if parts.audit_log is not None:
        app.state.audit = parts.audit_log
    config = uvicorn.Config(app, host=address[0], port=address[1], loop="none",
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
            raise OSError(f"the REST API could not listen on {address[0]}:{address[1]}")
        await asyncio.sleep(0.01)
    return server, task


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
