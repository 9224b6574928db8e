"""The API's gate, through a running API (uvicorn in its own thread, as `serve` runs it, real
sockets): credentials are checked from the head before any body byte is read, bodies are
bounded (declared and streamed), and bad or expired tokens get a clear 401. Attacks: a huge
unauthenticated body, a chunked body without end, a login form of megabytes."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text

from egressguard.cli.serve import ApiThread, _bind
from egressguard.control.api import create_app
from egressguard.store import Store

pytestmark = pytest.mark.timeout(60)
LIMIT = 64 * 1024


@dataclass
class Api:
    store: Store
    url: str
    port: int
    admin: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}


def running(store: Store, **options: object) -> Iterator[Api]:
    api = ApiThread(create_app(store, **options), _bind("127.0.0.1", 0))  # type: ignore[arg-type]
    api.start()
    token, _ = store.create_token("admin", "admin", "test")
    host, port = api.address
    try:
        yield Api(store, f"http://{host}:{port}", port, token)
    finally:
        api.stop()


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    """On both stores: what the gate looks up (tokens) is in the store."""
    yield from running(store, max_body=LIMIT)


@pytest.fixture
def sqlite_api(sqlite_store: Store) -> Iterator[Api]:
    """Body limits never reach the store: SQLite is enough."""
    yield from running(sqlite_store, max_body=LIMIT)


def head_only(port: int, head: str, timeout: float = 10.0) -> tuple[bytes, socket.socket]:
    """Send a request head and no body; return the response head (and the socket)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head.encode("latin-1"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data, sock


def closed_after_response(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        return False
    return True


def test_huge_unauthenticated_body_is_refused_before_a_byte_of_it_is_sent(api: Api) -> None:
    """Attack: a 300 MB body to a write endpoint without a token. The refusal (413: the
    declared size alone decides) arrives while not one body byte has been sent, so the
    server cannot have read or parsed it; within the limit, no token gives 401 unread."""
    started = time.monotonic()
    data, sock = head_only(api.port, "PUT /v1/clusters/x HTTP/1.1\r\nHost: a\r\n"
                                     "Content-Type: application/json\r\n"
                                     "Content-Length: 300000000\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"connection: close" in data.lower()
    assert time.monotonic() - started < 5
    assert closed_after_response(sock)
    data, sock = head_only(api.port, "PUT /v1/clusters/x HTTP/1.1\r\nHost: a\r\n"
                                     f"Content-Length: {LIMIT}\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert closed_after_response(sock)


def test_endless_chunked_unauthenticated_body_is_refused_before_it_is_read(sqlite_api: Api) -> None:
    data, sock = head_only(sqlite_api.port, "POST /v1/mgmt HTTP/1.1\r\nHost: a\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert closed_after_response(sock)


def test_declared_body_over_the_limit_is_413_unread_even_with_a_token(sqlite_api: Api) -> None:
    data, sock = head_only(sqlite_api.port, f"PUT /v1/clusters/x HTTP/1.1\r\nHost: a\r\n"
                                     f"Authorization: Bearer {sqlite_api.admin}\r\n"
                                     f"Content-Length: {LIMIT + 1}\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert closed_after_response(sock)


def test_streamed_chunked_body_is_cut_at_the_limit(sqlite_api: Api) -> None:
    """Attack: a chunked body that never ends, from a valid token: answered 413 once the
    limit is passed, the rest never read."""
    sock = socket.create_connection(("127.0.0.1", sqlite_api.port), timeout=10)
    sock.sendall((f"PUT /v1/clusters/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
                  f"{sqlite_api.admin}\r\nContent-Type: application/json\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n").encode())
    chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
    sent, answer = 0, b""
    sock.settimeout(0.05)
    while sent < 50 * LIMIT and not answer:
        try:
            sock.sendall(chunk)
            sent += 0x4000
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.settimeout(5)
    answer = answer or sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:200])
    assert sent < 20 * LIMIT  # refused near the limit, not after the whole stream


def test_a_body_within_the_limit_still_works(sqlite_api: Api) -> None:
    body = {"properties": {"restrictOutboundNetworkAccess": "Enabled",
                           "allowedFqdnList": [f"h{i}.example.com" for i in range(100)]}}
    answer = httpx.put(f"{sqlite_api.url}/v1/clusters/x", json=body, headers=sqlite_api.auth())
    assert answer.status_code == 200, answer.text


def test_login_form_of_megabytes_is_refused_before_it_is_read(sqlite_api: Api) -> None:
    """The login form is public, so its body is bounded far below the API's limit."""
    data, sock = head_only(sqlite_api.port, "POST /dashboard/login HTTP/1.1\r\nHost: a\r\n"
                                     "Content-Type: application/x-www-form-urlencoded\r\n"
                                     "Content-Length: 5000000\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert closed_after_response(sock)


def test_public_endpoints_answer_without_a_token(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/dashboard/login"):
        assert httpx.get(api.url + path).status_code == 200, path
    assert httpx.get(api.url + "/dashboard", follow_redirects=False).status_code == 303
    for path in ("/v1/clusters", "/v1/tokens", "/v1/audit"):
        refused = httpx.get(api.url + path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"


def test_an_expired_token_gets_401_saying_it_expired(api: Api) -> None:
    token, _ = api.store.create_token("ci", "viewer", "test")
    assert httpx.get(f"{api.url}/v1/clusters", headers=api.auth(token)).status_code == 200
    with api.store.engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET expires_at = :t WHERE name = 'ci'"),
                     {"t": datetime.now(UTC) - timedelta(seconds=1)})
    refused = httpx.get(f"{api.url}/v1/clusters", headers=api.auth(token))
    assert refused.status_code == 401
    message = refused.json()["error"]["message"]
    assert "expired" in message and "egressguard token rotate ci" in message


def test_tokens_are_created_with_a_lifetime_and_rotated_through_the_api(api: Api) -> None:
    created = httpx.post(f"{api.url}/v1/tokens", headers=api.auth(),
                         json={"name": "ci", "role": "viewer", "expires": "30d"})
    assert created.status_code == 201, created.text
    expires = datetime.fromisoformat(created.json()["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    bad = httpx.post(f"{api.url}/v1/tokens", headers=api.auth(),
                     json={"name": "ci", "role": "viewer", "expires": "forever"})
    assert bad.status_code == 422
    old = created.json()["token"]
    rotated = httpx.post(f"{api.url}/v1/tokens/ci/rotate", headers=api.auth())
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["token"]
    assert httpx.get(f"{api.url}/v1/clusters", headers=api.auth(old)).status_code == 401
    assert httpx.get(f"{api.url}/v1/clusters", headers=api.auth(new)).status_code == 200


def test_bad_source_is_refused_before_anything_else(sqlite_store: Store) -> None:
    for api in running(sqlite_store, allow_cidrs=["10.0.0.0/8"]):
        data, _sock = head_only(api.port, "PUT /v1/clusters/x HTTP/1.1\r\nHost: a\r\n"
                                          "Content-Length: 300000000\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 403"), data[:200]


def test_a_body_that_stalls_is_cut_with_408(sqlite_store: Store) -> None:
    """Attack: a body sent a byte now and then, to hold API connections forever."""
    for api in running(sqlite_store, body_idle_timeout=0.5):
        sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
        sock.sendall((f"PATCH /v1/clusters/default HTTP/1.1\r\nHost: a\r\n"
                      f"Authorization: Bearer {api.admin}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                      ).encode())
        started = time.monotonic()
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 5
        assert closed_after_response(sock)


def test_a_request_head_of_megabytes_is_refused_unbuffered(sqlite_api: Api) -> None:
    """Attack: endless header lines before any credential could be checked (uvicorn's
    httptools parser would buffer them all)."""
    sock = socket.create_connection(("127.0.0.1", sqlite_api.port), timeout=10)
    sock.sendall(b"GET /v1/clusters HTTP/1.1\r\nHost: a\r\n")
    line = b"X-Pad: " + b"a" * 8000 + b"\r\n"
    sent = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while sent < 50_000_000:
            sock.sendall(line * 16)
            sent += len(line) * 16
    assert sent < 5_000_000  # the server closed the connection early
    with contextlib.suppress(ConnectionResetError):
        answer = sock.recv(65536)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
