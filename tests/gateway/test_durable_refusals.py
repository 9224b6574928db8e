"""Every refusal is in the audit log (committed) before the client sees it, and a refusal
still happens when the audit log cannot confirm (fail closed)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from egressguard.audit.log import AuditLog
from egressguard.gateway import Limits
from tests.gateway.conftest import CLOSED_POLICY, connect_tunnel

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}", key=os.urandom(32))
    yield log
    log.close()


def on_disk(log: AuditLog, where: str) -> list[tuple[object, ...]]:
    """What is committed right now (no flush: a second connection reads the file)."""
    with log.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT host, verdict, permitted, rule, phase, close_cause FROM audit_events "
            f"WHERE {where}"))]


def test_connect_refusal_is_committed_before_the_403(gateway_factory, audit):
    gw = gateway_factory(sink=audit)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"CONNECT blocked.test:443 HTTP/1.1\r\nHost: blocked.test:443\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 403")
        rows = on_disk(audit, "host = 'blocked.test'")
    assert [(r[1], r[2]) for r in rows] == [("deny", 0)]


def test_domain_fronting_cut_is_committed_before_the_client_sees_it(
        gateway_factory, audit, tls_upstream, ca):
    gw = gateway_factory(sink=audit, resolve={"up.test": "127.0.0.1"})
    sock = connect_tunnel(gw.port, f"up.test:{tls_upstream.port}")
    context = ssl.create_default_context(cafile=None)
    ca.configure_trust(context)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        context.wrap_socket(sock, server_hostname="other.test")
    rows = on_disk(audit, "rule = 'guard:domain-fronting'")
    sock.close()
    assert [(r[0], r[1], r[2]) for r in rows] == [("up.test", "deny", 0)]


def test_revoked_tunnel_is_recorded_before_the_cut_and_relays_nothing_more(
        gateway_factory, audit, echo):
    gw = gateway_factory(sink=audit, resolve={"echo.test": "127.0.0.1"})
    sock = connect_tunnel(gw.port, f"echo.test:{echo.port}")
    sock.sendall(b"ping")
    assert sock.recv(10) == b"ping"
    gw.policy_path.write_text(CLOSED_POLICY)
    sock.settimeout(3)
    with contextlib.suppress(ConnectionResetError):  # an abort may arrive as a reset
        assert sock.recv(10) == b""
    rows = on_disk(audit, "close_cause = 'revoked'")
    sock.close()
    assert [(r[0], r[4]) for r in rows] == [("echo.test", "close")]


def test_refusal_still_happens_when_the_audit_log_is_down(gateway_factory, audit, caplog):
    audit.close()  # record() now raises AuditUnavailable at once
    gw = gateway_factory(sink=audit)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 403")
    assert "refusing anyway" in caplog.text


def test_refusal_waits_at_most_the_audit_timeout(gateway_factory, tmp_path):
    stalled = AuditLog(f"sqlite:///{tmp_path / 'stalled.db'}", key=os.urandom(32),
                       start=False)  # a writer that never commits
    gw = gateway_factory(sink=stalled, limits=Limits(audit_timeout=0.3))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 403")
    assert 0.25 < time.monotonic() - started < 3
    stalled.engine.dispose()
