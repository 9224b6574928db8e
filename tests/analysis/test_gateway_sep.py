"""Service endpoint policy enforced by a running gateway (`egressguard serve`, real
sockets): the listed storage account is reachable through the proxy, another account under
the same allowed wildcard is refused with layer `service_endpoint` (seed 004).

The policy needs an explicit network rule for 127.0.0.0/8 to lift the address guard for
the loopback test server; that network allow would decide before application rules, but the
engine checks service endpoint policies first for named storage hosts, which is what these
tests prove end to end."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

pytestmark = pytest.mark.timeout(60)

LISTED = "mystore.blob.core.windows.net"
SECONDARY = "mystore-secondary.blob.core.windows.net"
OTHER = "attacker.blob.core.windows.net"
POLICY = """
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: test-upstream        # lifts the address guard for the loopback test server
    priority: 100
    rules: [{name: loopback, destinations: [127.0.0.0/8], protocols: [TCP]}]
application_rule_collections:
  - name: storage
    priority: 200
    rules: [{name: blob, targets: ['*.blob.core.windows.net'], protocols: ['https:*']}]
service_endpoint_policies:
  - name: aml
    resources:
      - /subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/mystore
"""


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello from {self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def storage_server(ca: trustme.CA) -> Iterator[int]:
    """A TLS server on loopback with a certificate for all three account names."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LISTED, SECONDARY, OTHER).configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`egressguard serve` in a subprocess; names resolve to loopback by --resolve."""
    tmp_path = tmp_path_factory.mktemp("gateway")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [str(Path(sys.executable).parent / "egressguard"), "serve", "--listen",
            f"127.0.0.1:{port}", "--policy", str(policy), "--no-system-resolver",
            "--log-level", "warning", "--no-api"]
    for name in (LISTED, SECONDARY, OTHER):
        args += ["--resolve", f"{name}=127.0.0.1"]
    env = {**os.environ, "EGRESSGUARD_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([*args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"gateway exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("gateway did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _connect(gateway: int, target: str) -> tuple[socket.socket, bytes]:
    # A refusal waits for its durable audit record (up to the 5 s audit timeout).
    sock = socket.create_connection(("127.0.0.1", gateway), timeout=15)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, head


def _through_tunnel(gateway: int, name: str, port: int, ca: trustme.CA) -> tuple[bytes, bytes]:
    sock, head = _connect(gateway, f"{name}:{port}")
    with sock:
        if not head.startswith(b"HTTP/1.1 200"):
            rest = b""
            sock.settimeout(2)
            try:
                while chunk := sock.recv(65536):
                    rest += chunk
            except TimeoutError:
                pass
            return head, rest
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with context.wrap_socket(sock, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
                        .encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        return head, answer


def test_listed_account_is_reachable_and_another_account_under_the_wildcard_is_denied(
        gateway: int, storage_server: int, ca: trustme.CA) -> None:
    head, answer = _through_tunnel(gateway, LISTED, storage_server, ca)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n")[0]
    assert answer.endswith(f"hello from {LISTED}".encode())

    head, body = _through_tunnel(gateway, OTHER, storage_server, ca)
    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"X-Egressguard-Rule: service_endpoint" in head
    assert b"layer: service_endpoint" in head + body
    assert b"attacker" in head + body


def test_read_access_secondary_of_the_listed_account_is_covered(
        gateway: int, storage_server: int, ca: trustme.CA) -> None:
    head, answer = _through_tunnel(gateway, SECONDARY, storage_server, ca)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert answer.endswith(f"hello from {SECONDARY}".encode())


def test_plain_http_to_an_unlisted_account_is_denied_by_the_service_endpoint_policy(
        gateway: int, storage_server: int) -> None:
    with socket.create_connection(("127.0.0.1", gateway), timeout=15) as sock:
        sock.sendall(f"GET http://{OTHER}:{storage_server}/x HTTP/1.1\r\n"
                     f"Host: {OTHER}:{storage_server}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"layer: service_endpoint" in answer
