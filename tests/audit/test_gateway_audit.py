"""Real traffic through a running gateway lands in the audit log and /metrics exactly."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvloop
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from typer.testing import CliRunner

from egressguard.audit.log import AuditLog
from egressguard.audit.query import Filter, query
from egressguard.audit.sinks import ExfilMonitor, FanoutSink
from egressguard.cli.main import app as cli
from egressguard.engine.holder import SnapshotHolder
from egressguard.gateway import Gateway, Resolver, parse_resolve
from egressguard.policyfile import PolicyFileWatcher, load_active
from tests.gateway.conftest import Server, connect_tunnel, start_http

pytestmark = pytest.mark.timeout(60)

POLICY = """
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: upstreams
    priority: 100
    rules:
      - {name: loopback-one, destinations: [127.0.0.1/32], protocols: [TCP],
         match_resolved_names: true}
"""
CLOSED = "restrict_outbound_network_access: Enabled\n"


@dataclass
class Proxy:
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    log: AuditLog
    policy: Path
    watcher: PolicyFileWatcher

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.addresses[0][1]}"

    @property
    def port(self) -> int:
        return self.gateway.addresses[0][1]

    def records(self, **kw: object) -> list[dict[str, object]]:
        self.log.flush()
        return query(self.log.engine, Filter(**kw), sealer=self.log.sealer,  # type: ignore[arg-type]
                     newest_first=False, limit=1000)


@pytest.fixture
def proxy_factory(tmp_path: Path, sqlite_url: str, audit_key: bytes
                  ) -> Iterator[Callable[..., Proxy]]:
    made: list[tuple[Proxy, threading.Thread]] = []

    def make(policy: str = POLICY, exfil: int | None = None) -> Proxy:
        path = tmp_path / f"policy{len(made)}.yaml"
        path.write_text(policy)
        holder = SnapshotHolder(load_active(path))
        log = AuditLog(sqlite_url)
        sink = FanoutSink([log, ExfilMonitor(exfil, 60, warn_to=log)]) if exfil else log
        resolver = Resolver(parse_resolve(["up.test=127.0.0.1", "tun.test=127.0.0.1",
                                           "blocked.test=127.0.0.2"]), system=False)
        gateway = Gateway(holder, sink, resolver)
        loop = uvloop.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(gateway.start("127.0.0.1", 0), loop).result(5)
        watcher = PolicyFileWatcher(path, holder)
        asyncio.run_coroutine_threadsafe(_call(watcher.start), loop).result(5)
        proxy = Proxy(gateway, loop, log, path, watcher)
        made.append((proxy, thread))
        return proxy

    yield make
    for proxy, thread in made:
        asyncio.run_coroutine_threadsafe(_call(proxy.watcher.stop), proxy.loop).result(5)
        asyncio.run_coroutine_threadsafe(proxy.gateway.stop(0.5), proxy.loop).result(10)
        proxy.loop.call_soon_threadsafe(proxy.loop.stop)
        thread.join(5)
        proxy.log.close()


async def _call(fn: Callable[[], object]) -> object:
    return fn()


def scrape(api: TestClient) -> Callable[..., float]:
    """GET /metrics (as the control plane serves it) -> sample(name, labels) lookup."""
    body = api.get("/metrics").text
    values = {(s.name, frozenset(s.labels.items())): s.value
              for family in text_string_to_metric_families(body) for s in family.samples}

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return values.get((name, frozenset((labels or {}).items())), 0.0)
    return sample


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def tunnel_roundtrip(port: int, target: str, payload: bytes) -> None:
    sock = connect_tunnel(port, target)
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += sock.recv(65536)
    sock.close()


def test_allowed_and_denied_traffic_is_recorded_exactly(
        proxy_factory: Callable[..., Proxy], upstream: Server, echo: Server) -> None:
    from egressguard.control.api import create_app
    from egressguard.store import Store

    proxy = proxy_factory(exfil=1500)
    store = Store(str(proxy.log.engine.url))
    api = TestClient(create_app(store))
    allow_http = ("egressguard_decisions_total",
                  {"kind": "http", "verdict": "allow", "layer": "network", "permitted": "true"})
    deny_http = ("egressguard_decisions_total",
                 {"kind": "http", "verdict": "deny", "layer": "guard", "permitted": "false"})
    up = ("egressguard_bytes_total", {"direction": "up"})
    exfil = ("egressguard_exfiltration_warnings_total", {"host": "tun.test"})
    before = scrape(api)

    with httpx.Client(proxy=proxy.url, timeout=5) as client:
        assert client.get(f"http://up.test:{upstream.port}/hello?token=T").status_code == 200
        assert client.get(f"http://blocked.test:{upstream.port}/").status_code == 403
    tunnel_roundtrip(proxy.port, f"tun.test:{echo.port}", b"a" * 1000)
    tunnel_roundtrip(proxy.port, f"tun.test:{echo.port}", b"b" * 1000)

    wait_for(lambda: len(proxy.records(phase="close", kind="connect")) == 2)
    http = proxy.records(kind="http")
    assert [(r["phase"], r["host"], r["outcome"], r["layer"]) for r in http] == [
        ("decision", "up.test", "allow", "network"),
        ("close", "up.test", "allow", "network"),
        ("decision", "blocked.test", "deny", "guard")]
    opened, closed, denied = http
    assert opened["connection_id"] == closed["connection_id"] != ""
    assert opened["path"] == "/hello" and opened["method"] == "GET"  # query not kept
    assert opened["port"] == upstream.port and opened["resolved_address"] == "127.0.0.1"
    assert opened["rule"] == "network:upstreams/loopback-one"
    assert opened["client_address"].startswith("127.0.0.1")
    assert closed["bytes_down"] > 0 and closed["duration_s"] >= 0
    assert denied["rule"] == "guard:loopback" and "127.0.0.2" in denied["reason"]
    tunnels = proxy.records(kind="connect", phase="close")
    assert [(r["host"], r["bytes_up"], r["bytes_down"]) for r in tunnels] == [
        ("tun.test", 1000, 1000), ("tun.test", 1000, 1000)]
    [warning] = proxy.records(kind="warning")
    assert (warning["host"], warning["bytes_up"], warning["layer"]) == (
        "tun.test", 2000, "exfiltration")

    # /metrics as the control plane serves it: exact deltas of this traffic.
    after = scrape(api)
    store.close()
    assert after(*allow_http) - before(*allow_http) == 1
    assert after(*deny_http) - before(*deny_http) == 1
    assert after(*exfil) - before(*exfil) == 1
    assert after(*up) - before(*up) >= 2000
    assert after("egressguard_audit_events_total", {"result": "written"}) \
        - before("egressguard_audit_events_total", {"result": "written"}) == 8


def test_denial_is_durable_before_the_client_sees_403(
        proxy_factory: Callable[..., Proxy], upstream: Server) -> None:
    proxy = proxy_factory()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"GET http://blocked.test:{upstream.port}/ HTTP/1.1\r\n"
                     f"Host: blocked.test:{upstream.port}\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 403")
        with proxy.log.engine.connect() as conn:   # no flush: what is on disk right now
            found = conn.execute(text("SELECT count(*) FROM audit_events "
                                      "WHERE host = 'blocked.test'")).scalar()
    assert found == 1


def test_report_only_records_would_be_denials(proxy_factory: Callable[..., Proxy],
                                              sqlite_url: str) -> None:
    upstream2 = start_http(host="127.0.0.2")
    try:
        proxy = proxy_factory(POLICY + "report_only: true\n")
        with httpx.Client(proxy=proxy.url, timeout=5) as client:
            assert client.get(f"http://blocked.test:{upstream2.port}/").status_code == 200
            assert client.get(f"http://up.test:{upstream2.port}/").status_code in (502, 504)
    finally:
        upstream2.stop()
    proxy.log.flush()
    result = CliRunner().invoke(cli, ["logs", "--would-deny", "--store", sqlite_url,
                                      "--output", "json"])
    assert result.exit_code == 0, result.output
    import json
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert {(r["host"], r["verdict"], r["permitted"], r["phase"]) for r in rows} == {
        ("blocked.test", "deny", True, "decision"), ("blocked.test", "deny", True, "close")}
    enforced = CliRunner().invoke(cli, ["logs", "--verdict", "deny", "--store", sqlite_url])
    assert enforced.exit_code == 0 and "blocked.test" not in enforced.output


def test_policy_change_cutting_a_tunnel_is_recorded_as_revoked(
        proxy_factory: Callable[..., Proxy], echo: Server) -> None:
    proxy = proxy_factory()
    sock = connect_tunnel(proxy.port, f"tun.test:{echo.port}")
    sock.sendall(b"ping")
    assert sock.recv(10) == b"ping"
    proxy.policy.write_text(CLOSED)
    wait_for(lambda: bool(proxy.records(phase="close", kind="connect")), timeout=5)
    sock.close()
    [closed] = proxy.records(phase="close", kind="connect")
    assert (closed["close_cause"], closed["bytes_up"], closed["bytes_down"]) == (
        "revoked", 4, 4)


def test_recommendation_from_gateway_traffic_allows_exactly_it(
        proxy_factory: Callable[..., Proxy], upstream: Server, echo: Server,
        sqlite_url: str, tmp_path: Path) -> None:
    proxy = proxy_factory()
    with httpx.Client(proxy=proxy.url, timeout=5) as client:
        assert client.get(f"http://up.test:{upstream.port}/").status_code == 200
        assert client.get(f"http://blocked.test:{upstream.port}/").status_code == 403
    tunnel_roundtrip(proxy.port, f"tun.test:{echo.port}", b"x" * 10)
    wait_for(lambda: len(proxy.records(phase="close")) == 2)
    out = tmp_path / "recommended.yaml"
    runner = CliRunner()
    result = runner.invoke(cli, ["recommend", "--since", "1h", "--store", sqlite_url,
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output

    def check(*args: str) -> int:
        return runner.invoke(cli, ["check", *args, "--policy", str(out)]).exit_code

    assert check(f"http://up.test:{upstream.port}/", "--address", "127.0.0.1") == 0
    assert check(f"tun.test:{echo.port}", "--kind", "connect", "--address", "127.0.0.1") == 0
    assert check(f"http://blocked.test:{upstream.port}/", "--address", "127.0.0.2") == 1
    assert check(f"https://up.test:{upstream.port}/", "--address", "203.0.113.1") == 1
    assert check("http://other.test/", "--address", "198.51.100.1") == 1


def test_keepalive_exchange_on_a_pooled_upstream_is_one_record_read_as_decision_and_close(
        proxy_factory: Callable[..., Proxy], upstream: Server) -> None:
    proxy = proxy_factory()
    base = f"http://up.test:{upstream.port}"
    with httpx.Client(proxy=proxy.url, timeout=5) as client:  # one keep-alive connection
        for path in ("/a", "/b", "/c"):
            assert client.get(base + path).status_code == 200
        assert client.get(f"http://blocked.test:{upstream.port}/").status_code == 403
    wait_for(lambda: len(proxy.records(kind="http")) == 5)
    http = proxy.records(kind="http")
    # The first request opened the upstream (decision, then close); the next two reused
    # it and are one record each; the refusal is a decision, recorded before the 403.
    assert [(r["phase"], r["path"]) for r in http] == [
        ("decision", "/a"), ("close", "/a"), ("exchange", "/b"), ("exchange", "/c"),
        ("decision", "/")]
    for r in http[2:4]:
        assert r["method"] == "GET" and r["outcome"] == "allow" and r["bytes_down"] > 0
        assert r["duration_s"] >= 0 and r["close_cause"] == ""
        assert r["rule"] == "network:upstreams/loopback-one"
    assert len({r["connection_id"] for r in http}) == 4
    # What reads decisions and closes sees the exchange records as both.
    assert [r["path"] for r in proxy.records(kind="http", phase="decision")] == [
        "/a", "/b", "/c", "/"]
    assert [r["path"] for r in proxy.records(kind="http", phase="close")] == [
        "/a", "/b", "/c"]
    from egressguard.recommend.build import observe
    seen = observe(http)
    assert seen.calls == 3   # every permitted exchange counted once, with its bytes
    assert sum(u.bytes_down for by_port in seen.app.values() for u in by_port.values()) \
        == sum(int(r["bytes_down"]) for r in http)  # type: ignore[call-overload]


def test_exchange_still_open_after_a_second_has_its_decision_recorded_before_its_end(
        proxy_factory: Callable[..., Proxy], upstream: Server) -> None:
    from egressguard.enforce.events import SHORT_EXCHANGE_S

    proxy = proxy_factory()
    base = f"http://up.test:{upstream.port}"
    with httpx.Client(proxy=proxy.url, timeout=10) as client:
        assert client.get(base + "/warm").status_code == 200   # the upstream is pooled
        done = threading.Event()

        def slow() -> None:
            assert client.get(f"{base}/slow/{SHORT_EXCHANGE_S + 1.5}").status_code == 200
            done.set()

        thread = threading.Thread(target=slow)
        thread.start()
        wait_for(lambda: any(r["path"].startswith("/slow/")
                             for r in proxy.records(kind="http")), timeout=SHORT_EXCHANGE_S + 1)
        assert not done.is_set()  # recorded while the exchange is still open
        [opened] = [r for r in proxy.records(kind="http") if r["path"].startswith("/slow/")]
        assert opened["phase"] == "decision"
        thread.join(10)
        assert done.is_set()
    wait_for(lambda: len([r for r in proxy.records(kind="http")
                          if r["path"].startswith("/slow/")]) == 2)
    closed = [r for r in proxy.records(kind="http") if r["path"].startswith("/slow/")][1]
    assert closed["phase"] == "close" and closed["connection_id"] == opened["connection_id"]
    assert closed["duration_s"] >= SHORT_EXCHANGE_S
