"""`egressguard serve`: run the enforcing gateway with its control plane and audit log.

The composition is deliberately flat: a policy source fills a `SnapshotHolder`, the
`Gateway` enforces whatever the holder holds, and decisions go to the audit sink.

* Policy source: `source.follow`, the one place that decides where the policy in force
  comes from: the store's cluster (default: the configured store and cluster; a new
  cluster starts with the deny-all policy) followed live through its change feed; or,
  with `--policy FILE`, that file, reloaded on change or SIGHUP.
* The REST API (`127.0.0.1:8080` unless `--no-api`) runs in the same process, over the
  same store, so a change made through it is in force at once. With `--policy FILE` its
  policy routes and the dashboard describe the file (the gateway's own holder) and every
  policy write answers 409 (`control.inforce`). It runs in its own thread and
  event loop, so no API request (a huge or slow body, a heavy query) can stall the proxy.
  What the two share is thread-safe: the holder's swap tells the gateway through
  `call_soon_threadsafe`, the store's engine hands each thread its own connection.
* A start-up failure (port in use, store unreachable, bad option) prints one line with
  the cause and a hint and exits 2; `--debug` (or `--log-level debug`) shows the traceback.
* The audit log is written to the store's database unless `--no-audit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from egressguard import logsetup
from egressguard.audit.events import EventSink, NullSink
from egressguard.cli.listen import bind_failure, listen_tcp
from egressguard.cli.traces import Traced, TracesOpt
from egressguard.cli.workers import cores
from egressguard.dns.client import ask as dns_ask
from egressguard.enforce.tracing import Traces
from egressguard.engine import CompileError
from egressguard.engine.holder import SnapshotHolder
from egressguard.errors import EgressguardError, InputError
from egressguard.gateway import Gateway, Limits, Resolver, parse_hosts_file, parse_resolve
from egressguard.logsetup import LogFormat

if TYPE_CHECKING:
    from egressguard.audit.log import AuditLog
    from egressguard.control.apitls import ApiTLS
    from egressguard.fleet import Leader
    from egressguard.fleet.coldstart import ColdStart
    from egressguard.identity import IdentityHolder
    from egressguard.identity.follow import IdentityFollower
    from egressguard.keys.runtime import ClusterKey, StoreKeys, Suspendable
    from egressguard.source import LivePolicy, PolicyFeed
    from egressguard.store import Store

log = logging.getLogger("egressguard.gateway")
API_MAX_HEAD = 32 * 1024  # bytes of request line and headers the REST API accepts


ApiTlsCert = Annotated[Path | None, typer.Option(
    "--api-tls-cert", help="serve the REST API and dashboard over HTTPS with this PEM "
                           "certificate (chain) (with --api-tls-key)")]
ApiTlsKey = Annotated[Path | None, typer.Option(
    "--api-tls-key", help="the PEM private key of --api-tls-cert")]
ApiTlsSelfSigned = Annotated[bool, typer.Option(
    "--api-tls-self-signed", help="HTTPS with a self-signed certificate kept in the data "
                                  "home (api-tls/, key 0600); its SHA-256 fingerprint is "
                                  "printed at start")]


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
    api_max_body: Annotated[int, typer.Option(
        help="largest API request body in bytes (413 beyond)", min=1)] = 1024 * 1024,
    api_tls_cert: ApiTlsCert = None, api_tls_key: ApiTlsKey = None,
    api_tls_self_signed: ApiTlsSelfSigned = False,
    audit: Annotated[bool, typer.Option(help="record every decision in the audit log")
                     ] = True,
    audit_writer: Annotated[str, typer.Option(
        help="process (seal and write in a child process) or thread")] = "process",
    audit_writer_background: Annotated[bool, typer.Option(
        help="run the writer process in the background (SCHED_IDLE) while it keeps "
             "up: a lower tail latency at light load, ~10 us more median")] = True,
    audit_max_age: Annotated[str | None, typer.Option(
        help="prune audit records older than this (e.g. 30d, 12h)")] = None,
    audit_max_rows: Annotated[int | None, typer.Option(
        help="keep at most this many audit records")] = None,
    exfil_threshold: Annotated[int | None, typer.Option(
        help="warn when bytes sent to one destination within --exfil-window exceed this")
    ] = None,
    exfil_window: Annotated[str, typer.Option(help="window of --exfil-threshold")] = "1h",
    key_check_every: Annotated[str | None, typer.Option(
        help="watch every cluster's customer-managed key this often (e.g. 5m), once per "
             "fleet by its leader: a metric and a warning per change, also for clusters "
             "no gateway serves; it suspends nothing (each gateway enforces its own "
             "cluster's key every --key-check-interval; this is off unless given)")
    ] = None,
    recommend_every: Annotated[str | None, typer.Option(
        help="write each cluster's recommended policy this often (e.g. 24h) to "
             "--recommend-out, once per fleet by its leader")] = None,
    recommend_window: Annotated[str, typer.Option(
        help="traffic window the scheduled recommendations observe")] = "7d",
    recommend_out: Annotated[Path | None, typer.Option(
        help="folder of the scheduled recommendations (<cluster>.yaml and .diff)")] = None,
    key_check_interval: Annotated[float, typer.Option(
        help="seconds between this gateway's checks of its own cluster's customer-managed "
             "key: revocation suspends and recovery resumes within this; an unset "
             "keyVersion follows the latest within it. Always on, in every gateway (each "
             "suspends itself); not --key-check-every, the leader's fleet-wide watch that "
             "only reports", min=0.1, max=60.0)] = 5.0,
    audit_timeout: Annotated[float, typer.Option(
        help="seconds a refusal waits for its audit record to be durable (then refuses "
             "anyway and logs it)")] = 5.0,
    resolve: Annotated[list[str] | None, typer.Option(
        "--resolve", help="NAME=IP[,IP]: static address for a name (repeatable)")] = None,
    hosts_file: Annotated[Path | None, typer.Option(
        help="hosts(5)-format file of static addresses")] = None,
    system_resolver: Annotated[bool, typer.Option(
        help="fall back to the system resolver for names not given statically")] = True,
    nameserver: Annotated[list[str] | None, typer.Option(
        help="IP[:PORT] of a DNS server to ask directly instead of the system resolver, "
             "honouring the answers' TTLs (repeatable, tried in order)")] = None,
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
    tls_listen: Annotated[str | None, typer.Option(
        help="address:port of a TLS proxy listener whose clients prove their identity "
             "with a certificate (needs --tls-cert, --tls-key, --client-ca)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="the TLS listener's certificate")
                        ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the TLS listener's key")] = None,
    client_ca: Annotated[Path | None, typer.Option(
        help="CA whose client certificates the TLS listener accepts")] = None,
    identities: Annotated[bool | None, typer.Option(
        help="authenticate workloads with the store's identities, followed live "
             "(default: when serve opens the store anyway: store mode, the API or the "
             "audit log; --identities opens it for this alone)")] = None,
    jwt_jwks: Annotated[Path | None, typer.Option(
        help="JWKS file of the issuer of Bearer workload tokens (e.g. the cluster's "
             "/openid/v1/jwks); needs --jwt-issuer and --jwt-audience")] = None,
    jwt_issuer: Annotated[str | None, typer.Option(help="the tokens' `iss`")] = None,
    jwt_audience: Annotated[str | None, typer.Option(help="the tokens' `aud`")] = None,
    workers: Annotated[int | None, typer.Option(
        help="gateway processes sharing the port (SO_REUSEPORT; default: one per core); "
             "1 runs the gateway in this process", min=1, max=256)] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    debug: Annotated[bool, typer.Option(
        help="show the traceback of a start-up failure")] = False,
    log_format: Annotated[LogFormat, typer.Option(
        case_sensitive=False, help="text, or json: one object per line")] = LogFormat.TEXT,
    traces: TracesOpt = Traces.OFF,
) -> None:
    """Run the gateway: an HTTP/HTTPS forward proxy that enforces the policy."""
    debug = debug or log_level.lower() == "debug"
    logsetup.configure_or_exit(log_level, log_format, debug=debug)
    from egressguard import config

    cluster = config.cluster(cluster)
    parts = _Parts()
    try:
        parts.traced = Traced(traces, "egressguard-gateway")
        host, port = _listen_address(listen)
        api_address = _listen_address(api_listen) if api else None
        tls = api_tls(api_tls_cert, api_tls_key, api_tls_self_signed,
                      api_address[0] if api_address else "")
        _check_cidrs(allow_cidr or [])
        if non_tls_443 not in ("deny", "allow"):
            raise ValueError("--non-tls-443 must be deny or allow")
        if audit_writer not in ("process", "thread"):
            raise ValueError("--audit-writer must be process or thread")
        static = parse_resolve(resolve or [])
        nameservers = [_nameserver(n) for n in nameserver or []]
        if hosts_file is not None:
            for name, ips in parse_hosts_file(hosts_file).items():
                static.setdefault(name, []).extend(ips)
        proxy_tls = _tls_options(tls_listen, tls_cert, tls_key, client_ca)
        from egressguard.identity import JwtConfig

        jwt_config = JwtConfig.from_options(jwt_jwks, jwt_issuer, jwt_audience)
        parts.open(store, cluster, policy,
                   need_store=api or audit or bool(identities) or policy is None,
                   key_check_interval=key_check_interval)
        if identities is not False:
            parts.open_identities()
        if audit:
            parts.open_audit(audit_writer, audit_max_age, audit_max_rows, exfil_threshold,
                             exfil_window, background=audit_writer_background)
        parts.open_jobs(Singletons(audit_max_age if audit else None,
                                   audit_max_rows if audit else None, key_check_every,
                                   recommend_every, recommend_window, recommend_out))
    except Exception as exc:
        parts.close()
        _startup_failed(exc, debug)
    mode: Literal["deny", "allow"] = "allow" if non_tls_443 == "allow" else "deny"
    limits = Limits(max_header_bytes=max_header_bytes, header_timeout=header_timeout,
                    idle_timeout=idle_timeout, connect_timeout=connect_timeout,
                    response_timeout=response_timeout,
                    max_response_header_bytes=max_response_header_bytes,
                    max_connections=max_connections,
                    max_connections_per_source=max_connections_per_source,
                    shutdown_deadline=shutdown_deadline,
                    non_tls_443=mode, audit_timeout=audit_timeout)
    assert parts.holder is not None and parts.traced is not None
    resolver = Resolver(static, system=system_resolver, nameservers=nameservers,
                        ask=dns_ask if nameservers else None)
    # Spans are exported from the gateway's own process: with --traces, one process
    # unless more are asked for (which `_serve_with_workers` refuses with a hint).
    count = workers or (1 if traces is not Traces.OFF else cores())
    if count > 1:
        _serve_with_workers(count, parts, limits, host, port, debug, _WorkerOptions(
            static, system_resolver, nameservers, report_only, cluster, log_level,
            log_format, traces,
            jwt=(str(jwt_jwks), str(jwt_issuer), str(jwt_audience)) if jwt_config else None,
            mtls=(proxy_tls[0], proxy_tls[1], str(tls_cert), str(tls_key), str(client_ca))
            if proxy_tls else None,
            identities_url=parts.url if parts.identities is not None else None),
            (api_address, allow_cidr or None, api_max_body, tls))
        return
    gateway = Gateway(parts.holder, parts.traced.wrap(parts.sink), resolver, limits,
                      report_only=report_only, cluster=cluster,
                      identities=parts.identities, jwt=jwt_config)
    parts.bind_key(gateway.checkpoint)
    try:
        _run(_serve(gateway, parts, host, port, api_address, allow_cidr or None,
                    api_max_body, tls, proxy_tls))
    except Exception as exc:
        _startup_failed(exc, debug)
    finally:
        parts.close()


@dataclass(frozen=True)
class _WorkerOptions:
    """The options of `serve` each worker's gateway is built from."""

    static: dict[str, list[Any]]
    system: bool
    nameservers: list[tuple[str, int]]
    report_only: bool
    cluster: str
    log_level: str
    log_format: LogFormat
    traces: Traces
    # Who is calling, as in the single process: each worker verifies Bearer tokens
    # against the JWKS file (path, issuer, audience), listens for mTLS on the shared TLS
    # port (host, port, cert, key, client CA) and follows the store's identities itself
    # (revocations within a second in every worker).
    jwt: tuple[str, str, str] | None = None
    mtls: tuple[str, int, str, str, str] | None = None
    identities_url: str | None = None


def _serve_with_workers(count: int, parts: _Parts, limits: Limits, host: str, port: int,
                        debug: bool, options: _WorkerOptions,
                        api: tuple[Any, ...]) -> None:
    """`serve --workers N` (N > 1): the host's singletons here, the gateways in
    `cli.worker` processes (see `cli.workers`)."""
    from egressguard.cli.workers import Workers

    assert parts.holder is not None
    try:
        if options.traces is not Traces.OFF:
            raise ValueError("--traces needs --workers 1 (hint: the spans are exported "
                             "from the gateway's own process)")
        config = {"host": host, "port": port, "limits": limits, "static": options.static,
                  "system": options.system, "nameservers": options.nameservers,
                  "report_only": options.report_only, "cluster": options.cluster,
                  "audit": parts.audit_log is not None, "log_level": options.log_level,
                  "log_format": options.log_format, "jwt": options.jwt,
                  "mtls": options.mtls, "identities_url": options.identities_url}
        audit_log = parts.audit_log
        fleet = Workers(count, config, parts.holder,
                        parts.sink if audit_log is not None else None,
                        audit=audit_log)
        parts.bind_key(fleet)
        _run(_serve_workers(fleet, parts, *api))
    except Exception as exc:
        _startup_failed(exc, debug)
    finally:
        parts.close()


async def _serve_workers(fleet: Any, parts: _Parts, api_address: tuple[str, int] | None,
                         allow_cidrs: list[str] | None, api_max_body: int,
                         tls: ApiTLS | None) -> None:
    from egressguard.cli.workers import WorkerFailed

    host = fleet.config["host"]
    # Bound (not listening) with SO_REUSEPORT: a port in use fails here, port 0 picks the
    # one every worker then joins, and it stays ours until `serve` ends.
    reserved = _bind(host, fleet.config["port"], "--listen", "the gateway", reserve=True)
    mtls = fleet.config["mtls"]
    tls_reserved = _bind(mtls[0], mtls[1], "--tls-listen", "the TLS listener",
                         reserve=True) if mtls else None
    api = None
    try:
        fleet.config["port"] = reserved.getsockname()[1]
        if tls_reserved is not None:  # port 0: every worker joins the one picked here
            fleet.config["mtls"] = (mtls[0], tls_reserved.getsockname()[1], *mtls[2:])
        try:
            await asyncio.to_thread(fleet.start)
        except WorkerFailed as exc:
            raise StartupError(f"the gateway: {exc} (hint: check --listen)") from None
        api = _start_api(parts, api_address, allow_cidrs, api_max_body,
                         report_only=fleet.config["report_only"], tls=tls,
                         registry=fleet.registry())
        shown = f"[{host}]" if ":" in host else host
        listening = [f"{shown}:{fleet.config['port']} (HTTP proxy, CONNECT; "
                     f"{len(fleet.slots)} workers, pids {' '.join(map(str, fleet.pids))})"]
        if tls_reserved is not None:
            listening.append(f"{mtls[0]}:{fleet.config['mtls'][1]} (TLS proxy, client "
                             "certificates)")
        await _announce_and_wait(parts, listening, api, tls, fleet.config["report_only"])
    finally:
        if tls_reserved is not None:
            tls_reserved.close()
        limits = fleet.config["limits"]
        await asyncio.to_thread(fleet.stop, limits.shutdown_deadline
                                + limits.audit_timeout + 5)
        reserved.close()
        if api is not None:
            await asyncio.to_thread(api.stop)


def _nameserver(text: str) -> tuple[str, int]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` -> (address, port); ValueError with the reason."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or "53")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"--nameserver {text!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--nameserver {text!r}: {port!r} is not a port")
    return address, int(port)


class StartupError(EgressguardError):
    """A start-up failure already phrased for the operator: the cause and a hint."""


def _startup_failed(exc: Exception, debug: bool) -> None:
    """Print one line (cause, then a hint) and exit 2; with `debug`, the traceback too."""
    from egressguard.store import unavailable_reason

    if isinstance(exc, StartupError | InputError | CompileError | ValueError):
        hint = exc.hint if isinstance(exc, EgressguardError) else None
        line = f"{exc} (hint: {hint})" if hint else str(exc)
    elif (reason := unavailable_reason(exc)) is not None:
        line = (f"cannot reach the store: {reason} (hint: check that the database server "
                "runs, or the SQLite file's folder is writable, and that --store / "
                "EGRESSGUARD_STORE names it)")
    elif isinstance(exc, OSError):
        line = f"{exc} (hint: check the paths and permissions under $EGRESSGUARD_HOME)"
    else:
        line = (f"start-up failed: {type(exc).__name__}: {exc} (hint: rerun with --debug "
                "for the traceback)")
    if debug:
        log.error("start-up failed", exc_info=exc)
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2) from None


@dataclass(frozen=True)
class Singletons:
    """The fleet's singleton jobs `serve` was asked to run (see `_Parts.open_jobs`)."""

    max_age: str | None
    max_rows: int | None
    key_check_every: str | None
    recommend_every: str | None
    recommend_window: str
    recommend_out: Path | None


@dataclass
class _Parts:
    """What `serve` opens before the event loop starts, closed in reverse on the way out."""

    store: Store | None = None
    live: LivePolicy | None = None
    sink: EventSink = NullSink()  # noqa: RUF009 - stateless default
    audit_log: AuditLog | None = None
    leader: Leader | None = None
    cold: ColdStart | None = None
    url: str = ""  # the store's URL (also while it is down, for the audit log)
    traced: Traced | None = None
    key: ClusterKey | None = None  # the cluster's customer-managed key, if it names one
    store_keys: StoreKeys | None = None  # every cluster's key, for sealed policy versions
    identities: IdentityHolder | None = None
    follower: IdentityFollower | None = None

    def open_identities(self) -> None:
        """Follow the store's identities (revocations reach the gateway in < 1 s); the
        store down at start: none until it answers (`identity.follow`)."""
        if not self.url:
            return  # no store asked for (`--policy FILE` without the API or audit log)
        from egressguard.identity.follow import follow_identities
        from egressguard.keys.runtime import seal_store

        self.identities, self.follower = follow_identities(self.url, self.store,
                                                           seal=seal_store)

    @property
    def holder(self) -> SnapshotHolder | None:
        if self.live is not None:
            return self.live.holder
        return self.cold.holder if self.cold is not None else None  # store down at start

    def open(self, store_url: str | None, cluster: str, policy: Path | None,
             need_store: bool, key_check_interval: float = 5.0) -> None:
        """Open the store (for the API, the audit log and store mode), then the policy
        source; the file watcher's thread waits for `_serve` (`live.start()`)."""
        from egressguard.source import follow

        if need_store:
            from egressguard.store import StoreError, open_store

            try:
                self.store = open_store(store_url)
            except StoreError as exc:
                raise ValueError(f"cannot open the store: {exc}") from None
            except Exception as exc:
                if policy is not None or not self._cold_start(store_url, cluster, exc):
                    raise
                return
            self.url = self.store.url.render_as_string(hide_password=False)
            self.open_key(cluster, key_check_interval)
        if policy is None:
            assert self.store is not None
            self._check_cluster(self.store, cluster)
        self.live = follow(policy, cluster, self.store if policy is None else None,
                           start=False, cache=policy is None)

    @staticmethod
    def _check_cluster(store: Store, cluster: str) -> None:
        """A missing cluster is a start-up error whose hint says how to create it."""
        from egressguard.store import NotFound

        try:
            store.current(cluster)
        except NotFound:
            raise ValueError(f"cluster {cluster!r} does not exist in the store; create it "
                             f"with `egressguard cluster create {cluster}` (add --store URL "
                             "if the store is not the configured one)") from None
        except Exception as exc:
            raise ValueError(f"cluster {cluster!r}: {exc}") from None

    def _cold_start(self, store_url: str | None, cluster: str, exc: Exception) -> bool:
        """Store down: start on the cached last-known-good policy if there is one."""
        from egressguard.fleet.coldstart import start_on_cache

        self.cold = start_on_cache(store_url, cluster, exc)
        if self.cold is None:
            return False
        self.url = self.cold.url
        return True

    def open_key(self, cluster: str, check_interval: float) -> None:
        """The cluster's customer-managed key (docs/keys.md), when the store is up and the
        cluster names one: audit batches are sealed under it and a revoked key suspends
        the gateway. A store that cannot be read fails the start (never the local key
        by mistake); a cold start (store down) runs on the local key, as before."""
        from egressguard.keys.runtime import ClusterKey, seal_store

        if self.store is None:
            return
        self.key = ClusterKey.open(self.url, cluster, check_interval=check_interval)
        # Policy versions of every cluster sealed under (and opened with) its own key.
        self.store_keys = seal_store(self.store, known=[self.key] if self.key else [],
                                     check_interval=check_interval)

    def bind_key(self, checkpoint: Suspendable) -> None:
        """Suspend `checkpoint` while the key is unavailable; record each transition."""
        if self.key is None:
            return
        from egressguard.audit.compose import suspend_with_key

        if self.audit_log is not None:
            engine = self.audit_log.engine
        else:
            from egressguard.audit.db import make_engine, migrate

            engine = make_engine(self.url)
            migrate(engine)
        feed = self.live.feed if self.live is not None else None
        caches = [_CacheWipe(feed)] if feed is not None and feed.cache is not None else []
        suspend_with_key(self.key, [checkpoint, *caches], engine)

    def open_audit(self, writer: str, max_age: str | None, max_rows: int | None,
                   exfil_threshold: int | None, exfil_window: str,
                   background: bool = True) -> None:
        from egressguard.audit.compose import audit_sink
        from egressguard.audit.query import parse_duration

        assert self.url, "the audit log needs the store"
        url = self.url
        self.sink, self.audit_log = audit_sink(
            url,
            exfil_threshold=exfil_threshold,
            exfil_window_s=parse_duration(exfil_window),
            writer="thread" if writer == "thread" else "process",
            cluster_key=self.key, background=background)

    def open_jobs(self, wanted: Singletons) -> None:
        """Start the fleet leader when a singleton job is asked for: it runs them only
        while it holds the store's advisory lock, so once per fleet (`fleet/leader.py`)."""
        from egressguard.audit.log import Retention
        from egressguard.audit.query import parse_duration
        from egressguard.fleet import Job, jobs

        url = self.url
        found: list[Job] = []
        retention = Retention(
            max_age_s=parse_duration(wanted.max_age) if wanted.max_age else None,
            max_rows=wanted.max_rows)
        if retention.max_age_s is not None or retention.max_rows is not None:
            found.append(jobs.retention_job(  # prune marks under the cluster's key, if any
                url, retention, self.key.envelope if self.key else None))
        if wanted.key_check_every:
            found.append(jobs.key_check_job(url, parse_duration(wanted.key_check_every)))
        if wanted.recommend_every:
            if wanted.recommend_out is None:
                raise ValueError("--recommend-every needs --recommend-out FOLDER")
            found.append(jobs.recommendation_job(
                url, parse_duration(wanted.recommend_every),
                parse_duration(wanted.recommend_window), wanted.recommend_out))
        if not found:
            return
        if not url:
            raise ValueError(f"{found[0].name} needs the store (not --policy alone)")
        from egressguard.fleet import Leader

        self.leader = Leader(url, found).start()

    def close(self) -> None:
        if self.traced is not None:
            self.traced.shutdown()
        if self.follower is not None:
            self.follower.stop()
        if self.leader is not None:
            self.leader.stop()
        if self.live is not None:
            self.live.stop()
        if self.cold is not None:
            self.cold.stop()
        if self.audit_log is not None:
            self.audit_log.close()
        if self.store_keys is not None:
            self.store_keys.close()
        if self.key is not None:
            self.key.close()
        if self.store is not None:
            self.store.close()


class _CacheWipe:
    """The last-known-good policy cache follows the key: removed on suspension (a
    decrypted copy of the cluster's policy), saved again when the key is back."""

    def __init__(self, feed: PolicyFeed) -> None:
        self.feed = feed

    def suspend(self, reason: str) -> None:
        assert self.feed.cache is not None
        self.feed.cache.wipe()

    def resume(self) -> None:
        assert self.feed.cache is not None
        try:
            self.feed.cache.save(self.feed.store.current(self.feed.cluster))
        except Exception as exc:  # the next version in force saves it anyway
            log.warning("policy cache not saved after resuming: %s", exc)


def _check_cidrs(cidrs: list[str]) -> None:
    from egressguard.control.gate import parse_cidrs

    for cidr in cidrs:
        try:
            parse_cidrs([cidr])
        except ValueError as exc:
            raise ValueError(f"--allow-cidr {cidr!r}: {exc} (hint: a network such as "
                             "10.0.0.0/8 or 127.0.0.1/32)") from None


def _tls_options(listen: str | None, cert: Path | None, key: Path | None,
                 client_ca: Path | None) -> tuple[str, int, Any] | None:
    """(host, port, server context) of the mTLS listener, or None without one."""
    if listen is None:
        if cert or key or client_ca:
            raise ValueError("--tls-cert, --tls-key and --client-ca need --tls-listen")
        return None
    if not (cert and key and client_ca):
        raise ValueError("--tls-listen needs --tls-cert, --tls-key and --client-ca")
    from egressguard.gateway.mtls import server_context

    host, port = _listen_address(listen)
    return host, port, server_context(cert, key, client_ca)


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {text!r}: expected address:port (port 0 picks one)")
    return host.strip("[]"), int(port)


async def _serve(gateway: Gateway, parts: _Parts, host: str, port: int,
                 api_address: tuple[str, int] | None, allow_cidrs: list[str] | None,
                 api_max_body: int, tls: ApiTLS | None = None,
                 proxy_tls: tuple[str, int, Any] | None = None) -> None:
    """Listen (the proxy, its mTLS listener `proxy_tls`, the API over `tls`) and serve
    until SIGTERM or SIGINT."""
    try:
        await gateway.start(host, port)
    except OSError as exc:
        raise StartupError(bind_failure("the gateway", host, port, exc, "--listen")
                           ) from exc
    if proxy_tls is not None:
        try:
            await gateway.start_tls(*proxy_tls)
        except OSError as exc:
            await gateway.stop(0)
            raise StartupError(bind_failure("the TLS listener", proxy_tls[0], proxy_tls[1],
                                            exc, "--tls-listen")) from exc
    try:
        api = _start_api(parts, api_address, allow_cidrs, api_max_body,
                         report_only=gateway.report_only, tls=tls)
    except BaseException:
        await gateway.stop(0)
        raise
    listening = [f"{addr}:{bound} (HTTP proxy, CONNECT)" for addr, bound in gateway.addresses]
    listening += [f"{addr}:{bound} (TLS proxy, client certificates)"
                  for addr, bound in gateway.tls_addresses]
    await _announce_and_wait(parts, listening, api, tls, gateway.report_only)
    await gateway.stop()
    if api is not None:
        await asyncio.to_thread(api.stop)


async def _announce_and_wait(parts: _Parts, listening: list[str], api: ApiThread | None,
                             tls: ApiTLS | None, report_only: bool) -> None:
    """Once everything listens (one gateway or the workers): start following the policy,
    take the signals (SIGHUP reloads, SIGTERM/SIGINT stop), say what serves, and wait for
    the stop; then no more reloads while the caller drains open requests."""
    loop = asyncio.get_running_loop()
    if parts.live is not None:
        parts.live.start()
    stop = asyncio.Event()
    if parts.live is not None:
        loop.add_signal_handler(signal.SIGHUP, parts.live.reload)
    elif parts.cold is not None:
        loop.add_signal_handler(signal.SIGHUP, parts.cold.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for line in listening:
        typer.echo(f"egressguard: listening on {line}")
    if api is not None:
        announce_api(api, tls)
    assert parts.holder is not None
    active = parts.holder.active
    typer.echo(f"egressguard: policy {active.source} version {active.version}"
               f"{' (report-only)' if report_only else ''}")
    typer.echo(f"egressguard: audit log {'on' if parts.audit_log else 'off'}"
               + (f" ({parts.store.url.render_as_string(hide_password=True)})"
                  if parts.audit_log and parts.store else ""))
    await stop.wait()
    typer.echo("egressguard: shutting down", err=True)
    if parts.live is not None and parts.live.watcher is not None:
        parts.live.watcher.stop()  # no reload while open requests finish


class ApiThread:
    """The REST API's uvicorn server in a thread with its own event loop, so that nothing
    the API does can stall the proxy's loop. The socket is bound by the caller first, so
    a bind failure is an ordinary `OSError` before any thread starts."""

    def __init__(self, app: Any, sock: socket.socket, tls: ApiTLS | None = None,
                 log_level: str = "warning") -> None:
        import uvicorn

        # h11, not httptools: uvicorn bounds a request head only with h11 (httptools
        # buffers any number of header bytes, unauthenticated, before the gate runs).
        # log_config=None: uvicorn's records go through the process's handler
        # (`--log-format json` covers them too).
        # Beside the gateway only warnings; `egressguard api` passes its --log-level.
        config = uvicorn.Config(app, loop="none", http="h11", log_level=log_level.lower(),
                                log_config=None,
                                lifespan="off", server_header=False,
                                h11_max_incomplete_event_size=API_MAX_HEAD,
                                limit_concurrency=1024, timeout_graceful_shutdown=5,
                                ssl_certfile=str(tls.cert) if tls else None,
                                ssl_keyfile=str(tls.key) if tls else None)
        self.sock = sock
        self.server = uvicorn.Server(config)
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="egressguard-api",
                                       daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def _main(self) -> None:
        try:
            _run(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:  # reported by start(); the thread must not print
            self.error = exc

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started:
            if not self.thread.is_alive() or waited > timeout:
                raise StartupError(f"the REST API did not start: {self.error or 'timeout'} "
                                   "(hint: rerun with --debug)")
            deadline.wait(0.01)
            waited += 0.01

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def _bind(host: str, port: int, option: str = "--api-listen (or --no-api)",
          what: str = "the REST API", *, reserve: bool = False) -> socket.socket:
    """`what`'s listening socket (`reserve`: bound only, see `listen_tcp`); a failure is
    a `StartupError` naming `option`, the flag that fixes it."""
    try:
        sock = listen_tcp(host, port, reserve=reserve)
    except OSError as exc:
        raise StartupError(bind_failure(what, host, port, exc, option)) from exc
    sock.setblocking(False)
    return sock


def _start_api(parts: _Parts, address: tuple[str, int] | None,
               allow_cidrs: list[str] | None, max_body: int, *,
               report_only: bool = False, tls: ApiTLS | None = None,
               registry: Any = None) -> ApiThread | None:
    """Start the REST API in its own thread (the store and holder are shared)."""
    if address is None or parts.store is None:
        return None
    from egressguard.control.api import create_app

    bootstrap = parts.store.ensure_bootstrap()
    if bootstrap:
        typer.echo("egressguard: bootstrap admin token (shown once; rotate with "
                   f"`egressguard token rotate-bootstrap`):\n{bootstrap}", err=True)
    from egressguard.control.inforce import FileBook

    live = parts.live
    assert live is not None
    book = (FileBook(live.description, live.cluster, live.holder) if live.mode == "file"
            else None)
    try:
        app = create_app(parts.store, {live.cluster: live.holder}, allow_cidrs=allow_cidrs,
                         max_body=max_body, policy_file=book, cluster=live.cluster)
    except ValueError as exc:
        raise StartupError(f"--allow-cidr: {exc}") from None
    if parts.audit_log is not None:
        app.state.audit = parts.audit_log
    app.state.gateway_report_only = report_only  # the dashboard shows "Report-only: yes"
    if registry is not None:  # `--workers N`: every worker's metrics too
        app.state.registry = registry
    api = ApiThread(app, _bind(*address), tls)
    try:
        api.start()
    except BaseException:
        api.stop()
        raise
    return api


def api_tls(cert: Path | None, key: Path | None, self_signed: bool, host: str
            ) -> ApiTLS | None:
    """The API's TLS pair from the three options (checked now, not at the first
    handshake)."""
    if cert is None and key is None and not self_signed:
        return None
    from egressguard.control.apitls import resolve

    return resolve(cert, key, self_signed, None, host)


def announce_api(api: ApiThread, tls: ApiTLS | None) -> None:
    host, port = api.address
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls else "http"
    typer.echo(f"egressguard: REST API on {scheme}://{shown}:{port} "
               "(OpenAPI at /openapi.json, metrics at /metrics)")
    if tls is not None:
        kind = "self-signed " if tls.self_signed else ""
        typer.echo(f"egressguard: API {kind}certificate {tls.cert} SHA-256 "
                   f"{tls.fingerprint}")


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
