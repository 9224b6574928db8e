"""Report-only at the gateway means what it means at every point (docs/report-only.md):
the policy's `report_only: true` and `serve --report-only` each relay what the policy
would refuse, the engine's refusals and the gateway's own (domain fronting, non-TLS on
443) alike, and the audit log keeps each as a would-deny (verdict deny, permitted)."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from egressguard.audit.log import AuditLog
from tests.gateway.conftest import CLOSED_POLICY, LOOPBACK_POLICY, connect_tunnel, start_echo

pytestmark = pytest.mark.timeout(60)
SWITCHES = ["policy-flag", "serve-switch"]


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}", key=os.urandom(32))
    yield log
    log.close()


def _report_only(gateway_factory, audit: AuditLog, policy: str, switch: str, **kw):
    if switch == "policy-flag":
        return gateway_factory("report_only: true\n" + policy, sink=audit, **kw)
    return gateway_factory(policy, sink=audit, report_only=True, **kw)


def _decisions(audit: AuditLog, where: str) -> list[tuple[object, ...]]:
    audit.flush()
    with audit.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT kind, host, verdict, permitted, layer, rule FROM audit_events "
            f"WHERE phase = 'decision' AND {where} ORDER BY id"))]


@pytest.mark.parametrize("switch", SWITCHES)
def test_report_only_relays_a_denied_http_request_as_a_would_deny(
        gateway_factory, audit, upstream, switch):
    gw = _report_only(gateway_factory, audit, CLOSED_POLICY, switch,
                      resolve={"up.test": "127.0.0.1"})
    r = httpx.get(f"http://up.test:{upstream.port}/r", proxy=gw.url)
    assert r.status_code == 200 and upstream.peers
    assert _decisions(audit, "host = 'up.test'") == [
        ("http", "up.test", "deny", 1, "guard", "guard:loopback")]


@pytest.mark.parametrize("switch", SWITCHES)
def test_report_only_opens_a_denied_connect_tunnel_as_a_would_deny(
        gateway_factory, audit, echo, switch):
    gw = _report_only(gateway_factory, audit, CLOSED_POLICY, switch,
                      resolve={"echo.test": "127.0.0.1"})
    with connect_tunnel(gw.port, f"echo.test:{echo.port}") as sock:
        sock.sendall(b"through")
        assert sock.recv(100) == b"through"
    rows = _decisions(audit, "host = 'echo.test'")
    assert [(r[0], r[2], r[3]) for r in rows] == [("connect", "deny", 1)]


@pytest.mark.parametrize("switch", SWITCHES)
def test_report_only_relays_a_domain_fronted_tunnel_and_records_the_fronting(
        gateway_factory, audit, tls_upstream, ca, switch):
    gw = _report_only(gateway_factory, audit, LOOPBACK_POLICY, switch,
                      resolve={"up.test": "127.0.0.1"})
    context = ssl.create_default_context()
    ca.configure_trust(context)
    sock = connect_tunnel(gw.port, f"up.test:{tls_upstream.port}")
    with context.wrap_socket(sock, server_hostname="other.test") as tls:
        tls.sendall(b"GET /fronted HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
    rows = _decisions(audit, "host = 'up.test'")
    assert ("connect", "up.test", "allow", 1) in [r[:4] for r in rows]
    assert ("connect", "up.test", "deny", 1, "guard", "guard:domain-fronting") in rows


@pytest.mark.parametrize("switch", SWITCHES)
def test_report_only_relays_non_tls_bytes_on_443_and_records_them(
        gateway_factory, audit, switch):
    try:
        server = start_echo(443)
    except OSError as exc:  # not root, or port taken
        pytest.skip(f"cannot bind 127.0.0.1:443: {exc}")
    try:
        gw = _report_only(gateway_factory, audit, LOOPBACK_POLICY, switch,
                          resolve={"echo.test": "127.0.0.1"})
        with connect_tunnel(gw.port, "echo.test:443") as sock:
            sock.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")
            assert sock.recv(100) == b"SSH-2.0-OpenSSH_9.0\r\n"
    finally:
        server.stop()
    assert ("connect", "echo.test", "deny", 1, "guard", "guard:non-tls-443") in \
        _decisions(audit, "host = 'echo.test'")


def test_without_report_only_the_same_fronting_is_cut_and_recorded_as_refused(
        gateway_factory, audit, tls_upstream, ca):
    gw = gateway_factory(LOOPBACK_POLICY, sink=audit, resolve={"up.test": "127.0.0.1"})
    context = ssl.create_default_context()
    ca.configure_trust(context)
    sock = connect_tunnel(gw.port, f"up.test:{tls_upstream.port}")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        context.wrap_socket(sock, server_hostname="other.test")
    sock.close()
    assert ("connect", "up.test", "deny", 0, "guard", "guard:domain-fronting") in \
        _decisions(audit, "host = 'up.test'")


def test_report_only_policy_keeps_plain_refusals_of_malformed_requests(gateway_factory,
                                                                        audit):
    """A request that cannot be parsed is a protocol error, not a policy decision."""
    gw = gateway_factory("report_only: true\n" + CLOSED_POLICY, sink=audit)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"GET /origin-form HTTP/1.1\r\nHost: x.test\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert _decisions(audit, "1 = 1") == []


@pytest.mark.parametrize("switch", SWITCHES)
def test_report_only_keeps_a_tunnel_the_new_policy_would_cut_and_records_it_once(
        gateway_factory, audit, echo, switch):
    flag = "report_only: true\n" if switch == "policy-flag" else ""
    gw = _report_only(gateway_factory, audit, LOOPBACK_POLICY, switch,
                      resolve={"echo.test": "127.0.0.1"})
    with connect_tunnel(gw.port, f"echo.test:{echo.port}") as sock:
        sock.sendall(b"before")
        assert sock.recv(100) == b"before"
        gw.policy_path.write_text(flag + CLOSED_POLICY)
        deadline = time.monotonic() + 5
        while not _decisions(audit, "verdict = 'deny'") and time.monotonic() < deadline:
            time.sleep(0.1)
        gw.policy_path.write_text(flag + CLOSED_POLICY + "allowed_fqdn_list: [x.test]\n")
        time.sleep(1.0)                       # a second swap: recorded once, not again
        sock.sendall(b"after")
        assert sock.recv(100) == b"after"     # still relayed
    rows = _decisions(audit, "host = 'echo.test'")
    assert [(r[0], r[2], r[3]) for r in rows] == [("connect", "allow", 1),
                                                  ("connect", "deny", 1)]
