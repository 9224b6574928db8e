"""Byte budgets at a running gateway: a tunnel is cut at its budget while it is open,
later connections are refused (429) until the window resets, report-only only records,
and HTTP bodies count too. Real sockets: an echo server and an HTTP upstream on loopback."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from egressguard import metrics
from tests.gateway.conftest import LOOPBACK_POLICY, connect_tunnel, raw

pytestmark = pytest.mark.timeout(30)
CHUNK = 16 * 1024


def _policy(max_bytes: int, window: str = "1h", report_only: bool = False,
            destinations: str = "[up.test]", direction: str = "up") -> str:
    return LOOPBACK_POLICY + f"""
budgets:
  - name: uploads
    destinations: {destinations}
    max_bytes: {max_bytes}
    window: {window}
    direction: {direction}
    report_only: {'true' if report_only else 'false'}
"""


def _pump(sock: socket.socket, total: int) -> tuple[int, float | None]:
    """Send up to `total` bytes through a tunnel to the echo server, reading the echo;
    returns (bytes echoed back, seconds from the first refused write to seeing the cut)."""
    sock.settimeout(2)
    echoed = sent = 0
    crossed_at: float | None = None
    try:
        while sent < total:
            sock.sendall(b"x" * CHUNK)
            sent += CHUNK
            if crossed_at is None and sent > BUDGET:
                crossed_at = time.monotonic()
            while echoed < sent:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError
                echoed += len(data)
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        return echoed, None if crossed_at is None else time.monotonic() - crossed_at
    return echoed, None


BUDGET = 100_000


def test_tunnel_is_cut_at_its_byte_budget_within_a_second(gateway_factory, echo):
    gw = gateway_factory(_policy(BUDGET), resolve={"up.test": "127.0.0.1"})
    sock = connect_tunnel(gw.port, f"up.test:{echo.port}")
    with sock:
        echoed, took = _pump(sock, 10 * BUDGET)
    assert took is not None, "the tunnel was not cut"
    assert took < 1.0
    assert echoed <= BUDGET   # nothing beyond the budget reached the destination
    cut = gw.sink.wait_for(lambda e: e.layer == "budget")
    assert (cut.verdict, cut.permitted, cut.rule) == ("deny", False, "budget:uploads")
    assert "exceeded" in cut.reason and "up.test" in cut.reason
    close = gw.sink.wait_for(lambda e: e.phase == "close" and e.close_cause == "budget")
    assert close.connection_id == cut.connection_id and close.bytes_up <= BUDGET
    assert metrics.BUDGET_OVERRUNS.labels("uploads", "cut")._value.get() >= 1


def test_after_a_cut_new_connections_are_refused_until_the_window_resets(
        gateway_factory, echo):
    gw = gateway_factory(_policy(BUDGET, window="2s"), resolve={"up.test": "127.0.0.1"})
    with connect_tunnel(gw.port, f"up.test:{echo.port}") as sock:
        _, took = _pump(sock, 10 * BUDGET)
    assert took is not None
    answer = raw(gw.port, f"CONNECT up.test:{echo.port} HTTP/1.1\r\n"
                          f"Host: up.test:{echo.port}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 429"), answer
    assert b"Retry-After: " in answer and b"X-Egressguard-Rule: budget:uploads" in answer
    refused = gw.sink.wait_for(lambda e: e.layer == "budget" and "used up" in e.reason)
    assert refused.permitted is False
    # Another destination is not affected by this key's budget (per destination).
    other = raw(gw.port, f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n"
                         f"Host: 127.0.0.1:{echo.port}\r\n\r\n".encode(),
                read_until_close=False, timeout=1)
    assert other.startswith(b"HTTP/1.1 200"), other
    time.sleep(2.1)
    with connect_tunnel(gw.port, f"up.test:{echo.port}") as sock:
        sock.sendall(b"hello")
        assert sock.recv(5) == b"hello"


def test_report_only_budget_lets_the_tunnel_through_and_records_it(gateway_factory, echo):
    gw = gateway_factory(_policy(BUDGET, report_only=True), resolve={"up.test": "127.0.0.1"})
    with connect_tunnel(gw.port, f"up.test:{echo.port}") as sock:
        echoed, took = _pump(sock, 3 * BUDGET)
    assert took is None and echoed >= 3 * BUDGET
    would = gw.sink.wait_for(lambda e: e.layer == "budget")
    assert (would.verdict, would.permitted) == ("deny", True)
    assert len([e for e in gw.sink.events if e.layer == "budget"]) == 1  # once per window
    with connect_tunnel(gw.port, f"up.test:{echo.port}") as sock:  # not refused
        sock.sendall(b"again")
        assert sock.recv(5) == b"again"


def test_http_request_body_beyond_the_budget_is_cut_and_the_next_request_refused(
        gateway_factory, upstream):
    gw = gateway_factory(_policy(50_000), resolve={"up.test": "127.0.0.1"})
    url = f"http://up.test:{upstream.port}/"
    with httpx.Client(proxy=gw.url) as client:
        assert client.post(url, content=b"a" * 40_000).status_code == 200
        with pytest.raises(httpx.TransportError):
            client.post(url, content=b"b" * 40_000)
    refused = httpx.post(url, content=b"c", proxy=gw.url)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 3000
    assert httpx.get(f"http://127.0.0.1:{upstream.port}/", proxy=gw.url).status_code == 200


def test_download_budget_cuts_a_response_mid_body(gateway_factory, upstream):
    gw = gateway_factory(_policy(200_000, direction="down"),
                         resolve={"up.test": "127.0.0.1"})
    url = f"http://up.test:{upstream.port}/big/"
    assert httpx.get(url + "150000", proxy=gw.url).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "150000", proxy=gw.url)
    assert httpx.get(url + "10", proxy=gw.url).status_code == 429


def test_a_policy_without_budgets_meters_nothing(gateway_factory, echo):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    with connect_tunnel(gw.port, f"up.test:{echo.port}") as sock:
        echoed, took = _pump(sock, 3 * BUDGET)
    assert took is None and echoed >= 3 * BUDGET
    assert not [e for e in gw.sink.events if e.layer == "budget"]


def test_budget_cut_and_refusal_are_committed_to_the_audit_log_first(gateway_factory, echo,
                                                                      tmp_path):
    import os

    from sqlalchemy import text

    from egressguard.audit.log import AuditLog

    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}", key=os.urandom(32))
    try:
        gw = gateway_factory(_policy(BUDGET), resolve={"up.test": "127.0.0.1"}, sink=audit)
        with connect_tunnel(gw.port, f"up.test:{echo.port}") as sock:
            _, took = _pump(sock, 10 * BUDGET)
            with audit.engine.connect() as conn:   # committed before the client saw the cut
                cut = list(conn.execute(text(
                    "SELECT verdict, permitted, phase FROM audit_events "
                    "WHERE rule = 'budget:uploads'")))
        assert took is not None and [tuple(r) for r in cut] == [("deny", 0, "decision")]
        answer = raw(gw.port, f"CONNECT up.test:{echo.port} HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 429")
        with audit.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(text(
                "SELECT phase, close_cause FROM audit_events WHERE host = 'up.test' "
                "ORDER BY id"))]
        assert ("decision", "") in rows and len(
            [r for r in rows if r == ("decision", "")]) >= 3  # open, cut, refusal
    finally:
        audit.close()
