"""`egressguard dns serve|query`: the policy-enforcing DNS filter and a probe for it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol, TextIO

import typer

from egressguard import logsetup
from egressguard.audit.events import DecisionEvent, EventSink, NullSink
from egressguard.cli.output import Format, OutputOpt, emit
from egressguard.cli.traces import Traced, TracesOpt
from egressguard.dns import CnameMode, DenyRcode, DnsFilter, FilterConfig
from egressguard.enforce.tracing import Traces, TracingUnavailable
from egressguard.engine import InvalidHost, normalize_host
from egressguard.engine.holder import SnapshotHolder
from egressguard.engine.request import split_host_port
from egressguard.logsetup import LogFormat
from egressguard.source import SourceError, follow

if TYPE_CHECKING:
    from egressguard.audit.log import AuditLog
    from egressguard.keys.runtime import ClusterKey

dns_app = typer.Typer(help="DNS filter: answer only names the policy allows.",
                      no_args_is_help=True)
EXIT_OK, EXIT_BLOCKED, EXIT_ERROR = 0, 1, 2


def parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, or a bare host (with `default_port`)."""
    host, port = split_host_port(text)
    if not host or (port and not port.isdigit()) or not 0 <= int(port or default_port) < 65536:
        raise ValueError(f"{text!r}: expected host:port")
    return host, int(port or default_port)


class JsonLinesSink:
    """Writes each decision as one JSON line (for `--events`); the audit log is the
    durable sink once the control plane supplies it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def emit(self, event: DecisionEvent) -> None:
        self.stream.write(json.dumps(event.as_dict(), separators=(",", ":")) + "\n")
        self.stream.flush()


@dns_app.command("serve")
def serve(
    listen: Annotated[str, typer.Option(help="address:port for UDP and TCP")
                      ] = "127.0.0.1:5353",
    upstream: Annotated[str, typer.Option(help="upstream resolver address:port")
                        ] = "127.0.0.1:53",
    policy: Annotated[Path | None, typer.Option(
        help="policy file (YAML/JSON), reloaded on change or SIGHUP (default: the policy "
             "in force: --cluster, else the store's default cluster, else the built-in "
             "deny-all policy)")] = None,
    deny_rcode: Annotated[DenyRcode, typer.Option(
        case_sensitive=False, help="answer to a refused name")] = DenyRcode.NXDOMAIN,
    cname_mode: Annotated[CnameMode, typer.Option(
        case_sensitive=False,
        help="names an answer leads to: addresses (only the address guard), rules "
             "(also refuse chains into explicitly denied names), strict (every name "
             "must be allowed)")] = CnameMode.RULES,
    report_only: Annotated[bool, typer.Option(
        help="answer everything; record what would have been refused")] = False,
    timeout: Annotated[float, typer.Option(help="upstream seconds before SERVFAIL")] = 2.0,
    max_inflight: Annotated[int, typer.Option(
        help="queries worked on at once; beyond it SERVFAIL")] = 1000,
    cluster: Annotated[str | None, typer.Option(
        help="follow this store cluster's policy (changes are in force within 1 s); with "
             "--policy, only the name recorded in events")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", envvar="EGRESSGUARD_STORE",
        help="store URL for --cluster (default: the embedded store)")] = None,
    events: Annotated[Path | None, typer.Option(
        help="also write every decision as JSON lines to this file ('-' for stdout)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_format: Annotated[LogFormat, typer.Option(
        case_sensitive=False, help="text, or json: one object per line")] = LogFormat.TEXT,
    audit: Annotated[bool | None, typer.Option(
        "--audit/--no-audit",
        help="record every decision in the audit log (`egressguard logs`) of the store "
             "$EGRESSGUARD_STORE or the embedded one; default: on when a store exists")
    ] = None,
    traces: TracesOpt = Traces.OFF,
) -> None:
    """Run the DNS filter: decide every question, forward allowed ones, check answers."""
    try:
        listen_at, upstream_at = parse_endpoint(listen, 53), parse_endpoint(upstream, 53)
        live = _follow(policy, cluster, store)
    except (SourceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    logsetup.configure_or_exit(log_level, log_format)
    try:
        traced = Traced(traces, "egressguard-dns")
    except TracingUnavailable as exc:
        live.stop()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    config = FilterConfig(
        listen=listen_at, upstream=upstream_at, deny_rcode=deny_rcode,
        cname_mode=cname_mode, report_only=report_only, timeout=timeout,
        max_inflight=max_inflight, cluster=live.cluster)
    sink: EventSink = NullSink()
    stream: TextIO | None = None
    if events is not None:
        stream = sys.stdout if str(events) == "-" else events.open("a", encoding="utf-8")
        sink = JsonLinesSink(stream)
    audit_log, key = _audit_log(audit, store, live.cluster)
    if audit_log is not None:
        from egressguard.audit.sinks import FanoutSink

        sink = audit_log if stream is None else FanoutSink([sink, audit_log])
    dns_filter = DnsFilter(live.holder, config, traced.wrap(sink))
    if key is not None and audit_log is not None:  # fail closed while the key is gone
        from egressguard.audit.compose import suspend_with_key

        suspend_with_key(key, [dns_filter.checkpoint], audit_log.engine)
    try:
        _run(_serve(dns_filter, live))
    except OSError as exc:
        from egressguard.cli.listen import bind_failure

        typer.echo(f"error: {bind_failure('the DNS filter', *listen_at, exc, '--listen')}",
                   err=True)
        raise typer.Exit(EXIT_ERROR) from None
    finally:
        live.stop()
        traced.shutdown()
        if audit_log is not None:
            audit_log.close()
        if key is not None:
            key.close()
        if stream is not None and stream is not sys.stdout:
            stream.close()


def _audit_log(audit: bool | None, store: str | None, cluster: str
               ) -> tuple[AuditLog | None, ClusterKey | None]:
    """The audit log DNS decisions go to (None: `--no-audit`, or no store is configured or
    exists and `--audit` was not asked for: a filter never creates a store nobody reads),
    and the cluster's customer-managed key it seals under, if the cluster names one."""
    from egressguard.source.lookup import store_available

    if audit is False or (audit is None and not store_available(store)):
        return None, None
    from egressguard.audit.compose import audit_sink
    from egressguard.keys.runtime import ClusterKey
    from egressguard.paths import default_store_url
    from egressguard.store.urls import normalize_url

    try:
        url = normalize_url(store or default_store_url()).render_as_string(
            hide_password=False)
        key = ClusterKey.open(url, cluster)
        return audit_sink(url, cluster_key=key)[1], key
    except Exception as exc:  # the store cannot be opened: one line, no traceback
        typer.echo(f"error: cannot open the audit log: {exc} (hint: check "
                   "$EGRESSGUARD_STORE, or run with --no-audit)", err=True)
        raise typer.Exit(EXIT_ERROR) from None


class Followed(Protocol):
    """What the filter's policy comes from: a `LivePolicy`, or a `ColdStart` (the store
    was down at start: the cached last-known-good policy, until the store is back)."""

    holder: SnapshotHolder
    cluster: str

    def start(self) -> object: ...
    def reload(self) -> bool: ...
    def stop(self) -> None: ...


def _follow(policy: Path | None, cluster: str | None, store: str | None) -> Followed:
    """The policy followed live; in store mode each version in force is cached, and a
    store that is down at start is replaced by the cached version (as `serve` does).
    Without a cache the failure stands: no policy means no filter (fail closed)."""
    try:
        return follow(policy, cluster, store, start=False, cache=policy is None)
    except SourceError:
        if policy is not None:
            raise
        from egressguard import config
        from egressguard.fleet.coldstart import start_on_cache
        from egressguard.store import open_store

        try:
            open_store(store or None).close()
        except Exception as exc:  # the store is down, not (say) a missing cluster
            cold = start_on_cache(store, config.cluster(cluster), exc, start=False)
            if cold is not None:
                return cold
        raise


async def _serve(dns_filter: DnsFilter, live: Followed) -> None:
    loop = asyncio.get_running_loop()
    host, port = await dns_filter.start()
    live.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP,
                            lambda: loop.run_in_executor(None, live.reload))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    active = dns_filter.holder.active
    config = dns_filter.config
    typer.echo(f"egressguard dns: listening on {host}:{port} (UDP, TCP), upstream "
               f"{config.upstream[0]}:{config.upstream[1]}")
    typer.echo(f"egressguard dns: policy {active.source} version {active.version}"
               f"{' (report-only)' if config.report_only else ''}")
    await stop.wait()
    typer.echo("egressguard dns: shutting down", err=True)
    await dns_filter.close()


def _run(main: object) -> None:
    from egressguard.dns.server import new_loop

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main)  # type: ignore[arg-type]


@dns_app.command("query")
def query(
    name: Annotated[str, typer.Argument(help="name to look up (any spelling, IDN allowed)")],
    qtype: Annotated[str, typer.Option("--type", help="record type")] = "A",
    server: Annotated[str, typer.Option(help="DNS filter address:port")] = "127.0.0.1:5353",
    tcp: Annotated[bool, typer.Option(help="ask over TCP")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 5.0,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Ask the filter one question; print the answer or why it was refused.
    Exit 0 answered, 1 refused (NXDOMAIN/REFUSED/SERVFAIL), 2 bad input or no answer."""
    from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

    from egressguard.dns.wire import EDE_OPTION

    try:
        host, port = parse_endpoint(server, 53)
        wire_name = normalize_host(name).name
        question = DNSRecord.question(wire_name, qtype.upper())
        question.add_ar(EDNS0(udp_len=1232))
        reply = DNSRecord.parse(question.send(host, port, tcp=tcp, timeout=timeout))
    except (InvalidHost, ValueError, AttributeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as exc:
        typer.echo(f"error: no answer from {server}: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    answers = [{"name": str(rr.rname), "ttl": rr.ttl, "type": str(QTYPE.get(rr.rtype)),
                "data": str(rr.rdata)} for rr in reply.rr]
    reasons = [{"ede": int.from_bytes(opt.data[:2], "big"),
                "text": opt.data[2:].decode("utf-8", "replace")}
               for rr in reply.ar if rr.rtype == QTYPE.OPT
               for opt in rr.rdata if opt.code == EDE_OPTION and len(opt.data) >= 2]
    data = {"status": str(RCODE.get(reply.header.rcode)), "truncated": bool(reply.header.tc),
            "answers": answers, "reasons": reasons}
    emit(data, output, lambda: "\n".join(
        [f"status: {data['status']}{' (truncated)' if data['truncated'] else ''}",
         *(f"answer: {a['name']} {a['ttl']} {a['type']} {a['data']}" for a in answers),
         *(f"reason: [EDE {r['ede']}] {r['text']}" for r in reasons)]))
    raise typer.Exit(EXIT_OK if reply.header.rcode == 0 else EXIT_BLOCKED)


def register(app: typer.Typer) -> None:
    app.add_typer(dns_app, name="dns")
