"""CONNECT tunnels: decided before connecting, SNI checked against the CONNECT host
(domain fronting), non-TLS on 443, and tunnels cut when the policy stops allowing them."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time

import httpx
import pytest

from tests.gateway.conftest import CLOSED_POLICY, LOOPBACK_POLICY, connect_tunnel, start_echo

pytestmark = pytest.mark.timeout(30)


def _client_context(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_allowed_connect_carries_tls_end_to_end(gateway_factory, tls_upstream, ca):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    with httpx.Client(proxy=gw.url, verify=_client_context(ca)) as client:
        r = client.get(f"https://up.test:{tls_upstream.port}/secure")
        assert json.loads(r.text)["path"] == "/secure"
        r2 = client.get(f"https://up.test:{tls_upstream.port}/again")
        assert r2.status_code == 200
    event = gw.sink.wait_for(lambda e: e.kind == "connect" and e.phase == "close")
    assert event.bytes_up > 0 and event.bytes_down > 0 and event.close_cause in (
        "client", "upstream")


def test_curl_https_through_tunnel_with_alpn_untouched(gateway_factory, tls_upstream, ca,
                                                       tmp_path):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    out = subprocess.run(
        ["curl", "-s", "-v", "--cacert", str(ca_file), "-x", gw.url,
         f"https://up.test:{tls_upstream.port}/curl"],
        capture_output=True, timeout=10, text=True)
    assert json.loads(out.stdout)["path"] == "/curl"
    assert "ALPN: server accepted http/1.1" in out.stderr


def test_denied_connect_is_403_and_never_connects(gateway_factory, tls_upstream):
    gw = gateway_factory(CLOSED_POLICY, resolve={"up.test": "127.0.0.1"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(f"CONNECT up.test:{tls_upstream.port} HTTP/1.1\r\n"
                     f"Host: up.test:{tls_upstream.port}\r\n\r\n".encode())
        out = sock.recv(4096)
    assert out.startswith(b"HTTP/1.1 403") and b"guard:loopback" in out
    assert tls_upstream.peers == []


def test_curl_reports_denied_connect(gateway_factory):
    gw = gateway_factory()
    out = subprocess.run(["curl", "-s", "-v", "-x", gw.url, "https://blocked.test/"],
                         capture_output=True, timeout=10, text=True)
    assert "403" in out.stderr and out.returncode != 0


def test_domain_fronting_sni_mismatch_is_cut(gateway_factory, tls_upstream, ca):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    sock = connect_tunnel(gw.port, f"up.test:{tls_upstream.port}")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _client_context(ca).wrap_socket(sock, server_hostname="other.test")
    sock.close()
    event = gw.sink.wait_for(lambda e: e.rule == "guard:domain-fronting")
    assert not event.permitted and "other.test" in event.reason


def test_sni_matching_connect_host_in_other_spelling_is_allowed(gateway_factory, tls_upstream,
                                                                ca):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    sock = connect_tunnel(gw.port, f"UP.TEST.:{tls_upstream.port}")
    with _client_context(ca).wrap_socket(sock, server_hostname="up.test") as tls:
        tls.sendall(b"GET /x HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")


def test_ip_literal_connect_decides_the_sni_as_the_host(gateway_factory, tls_upstream, ca):
    gw = gateway_factory()
    sock = connect_tunnel(gw.port, f"127.0.0.1:{tls_upstream.port}")
    with _client_context(ca).wrap_socket(sock, server_hostname="up.test") as tls:
        tls.sendall(b"GET /ip HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")


def test_ip_literal_connect_with_invalid_sni_is_cut(gateway_factory, tls_upstream, ca):
    gw = gateway_factory()
    sock = connect_tunnel(gw.port, f"127.0.0.1:{tls_upstream.port}")
    context = _client_context(ca)
    context.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        context.wrap_socket(sock, server_hostname="a/b.test")
    sock.close()
    gw.sink.wait_for(lambda e: e.rule == "guard:invalid-sni")


def test_connect_to_metadata_address_literal_is_denied(gateway_factory):
    gw = gateway_factory()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"CONNECT [::ffff:a9fe:a9fe]:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        out = sock.recv(4096)
    assert out.startswith(b"HTTP/1.1 403") and b"guard:link-local" in out


def test_plain_tcp_through_tunnel_on_other_ports(gateway_factory, echo):
    gw = gateway_factory(resolve={"echo.test": "127.0.0.1"})
    with connect_tunnel(gw.port, f"echo.test:{echo.port}") as sock:
        sock.sendall(b"hello, not TLS")
        assert sock.recv(100) == b"hello, not TLS"


def _echo_on_443():
    try:
        return start_echo(443)
    except OSError as exc:  # not root, or port taken
        pytest.skip(f"cannot bind 127.0.0.1:443: {exc}")


def test_non_tls_bytes_on_port_443_are_denied_by_default(gateway_factory):
    server = _echo_on_443()
    try:
        gw = gateway_factory(resolve={"echo.test": "127.0.0.1"})
        with connect_tunnel(gw.port, "echo.test:443") as sock:
            sock.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")
            assert sock.recv(100) == b""
        gw.sink.wait_for(lambda e: e.rule == "guard:non-tls-443")
    finally:
        server.stop()


def test_non_tls_on_443_can_be_allowed(gateway_factory):
    from egressguard.gateway import Limits
    server = _echo_on_443()
    try:
        gw = gateway_factory(resolve={"echo.test": "127.0.0.1"},
                             limits=Limits(non_tls_443="allow"))
        with connect_tunnel(gw.port, "echo.test:443") as sock:
            sock.sendall(b"plain")
            assert sock.recv(100) == b"plain"
    finally:
        server.stop()


def test_open_tunnel_is_cut_within_one_second_when_policy_revokes_it(gateway_factory, echo):
    gw = gateway_factory(resolve={"echo.test": "127.0.0.1"})
    sock = connect_tunnel(gw.port, f"echo.test:{echo.port}")
    sock.sendall(b"ping")
    assert sock.recv(10) == b"ping"
    changed = time.monotonic()
    gw.policy_path.write_text(CLOSED_POLICY)
    sock.settimeout(3)
    assert sock.recv(10) == b""
    assert time.monotonic() - changed < 1.0
    sock.close()
    event = gw.sink.wait_for(lambda e: e.close_cause == "revoked")
    assert event.kind == "connect" and event.bytes_up == 4


def test_tunnel_still_allowed_after_unrelated_policy_change_stays_open(gateway_factory, echo):
    gw = gateway_factory(resolve={"echo.test": "127.0.0.1"})
    sock = connect_tunnel(gw.port, f"echo.test:{echo.port}")
    gw.policy_path.write_text(LOOPBACK_POLICY + "allowed_fqdn_list: [new.test]\n")
    time.sleep(0.8)
    sock.sendall(b"still")
    assert sock.recv(10) == b"still"
    sock.close()


def test_connect_without_port_is_400(gateway_factory):
    gw = gateway_factory()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"CONNECT up.test HTTP/1.1\r\nHost: up.test\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")


def test_destination_that_greets_and_hangs_up_at_once_still_reaches_the_client(
        gateway_factory):
    # A server-first protocol (an SSH or SMTP banner) may speak and close before the
    # gateway has even answered the CONNECT: the client must get the banner, then EOF,
    # not a 502 (the gateway had been taking the early close for a refused connection).
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def greet_and_close() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"SSH-2.0-banner\r\n")
        conn.close()

    threading.Thread(target=greet_and_close, daemon=True).start()
    gw = gateway_factory(LOOPBACK_POLICY)
    try:
        with connect_tunnel(gw.port, f"127.0.0.1:{port}") as sock:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        assert data == b"SSH-2.0-banner\r\n"
    finally:
        listener.close()
