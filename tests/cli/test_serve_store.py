"""`egressguard serve` in its default, store-backed mode: the REST API in the same process
changes what the gateway enforces at once, and every decision lands in the audit log."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import Server

pytestmark = pytest.mark.timeout(90)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


class Running:
    def __init__(self, proc: subprocess.Popen[str], proxy: str, api: str, token: str) -> None:
        self.proc, self.proxy, self.api, self.token = proc, proxy, api, token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def _serving(home: Path, *extra: str) -> Iterator[Running]:
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
         "--resolve", "up.test=127.0.0.1", "--no-system-resolver", "--audit-writer", "thread",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(home)})
    assert proc.stdout is not None and proc.stderr is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    proxy = re.search(r"listening on (\S+)", lines[0])
    api = re.search(r"REST API on (\S+)", lines[1])
    assert proxy and api, lines
    token = ""
    while not token.startswith("egt_"):
        token = proc.stderr.readline().strip()
    try:
        yield Running(proc, f"http://{proxy.group(1)}", api.group(1), token)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Running]:
    with _serving(tmp_path) as running:
        yield running


def test_api_change_is_enforced_at_once_and_both_decisions_are_audited(
        gateway: Running, upstream: Server) -> None:
    url = f"http://up.test:{upstream.port}/hello"
    with httpx.Client(proxy=gateway.proxy) as client:
        denied = client.get(url)
        assert (denied.status_code, denied.headers["X-Egressguard-Rule"]) == (403, "guard:loopback")

        patch = {"properties": {
            "networkRuleCollections": [{
                "name": "loopback", "priority": 100, "action": "allow",
                "rules": [{"name": "up", "destinations": ["127.0.0.0/8"],
                           "protocols": ["TCP"], "ports": [str(upstream.port)],
                           "matchResolvedNames": True}]}]}}
        changed = httpx.patch(f"{gateway.api}/v1/clusters/default", json=patch,
                              headers=gateway.auth)
        assert changed.status_code == 200, changed.text
        started = time.monotonic()
        assert client.get(url).status_code == 200
        assert time.monotonic() - started < 1.0

    deadline = time.monotonic() + 5
    while True:
        records = httpx.get(f"{gateway.api}/v1/audit", params={"dest": "up.test"},
                            headers=gateway.auth).json()
        decisions = [r for r in records["items"] if r.get("phase") == "decision"]
        if len(decisions) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    verdicts = sorted((r["verdict"], r["layer"]) for r in decisions)
    assert verdicts == [("allow", "network"), ("deny", "guard")]


def test_viewer_token_cannot_change_the_policy(gateway: Running) -> None:
    created = httpx.post(f"{gateway.api}/v1/tokens", json={"name": "v", "role": "viewer"},
                         headers=gateway.auth)
    assert created.status_code in (200, 201), created.text
    viewer = {"Authorization": f"Bearer {created.json()['token']}"}
    patch = {"properties": {"restrictOutboundNetworkAccess": "Disabled"}}
    refused = httpx.patch(f"{gateway.api}/v1/clusters/default", json=patch, headers=viewer)
    assert refused.status_code == 403
    shown = httpx.get(f"{gateway.api}/v1/clusters/default", headers=viewer).json()
    assert shown["properties"]["restrictOutboundNetworkAccess"] in ("Enabled", True)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _blast_unauthenticated(api: str, stop: threading.Event) -> None:
    """Attack: 300 MB bodies without a token, sent as fast as the server takes them."""
    host, port = api.removeprefix("http://").rsplit(":", 1)
    while not stop.is_set():
        try:
            with socket.create_connection((host, int(port)), timeout=2) as sock:
                sock.sendall(b"PUT /v1/clusters/x HTTP/1.1\r\nHost: a\r\n"
                             b"Content-Type: application/json\r\n"
                             b"Content-Length: 300000000\r\n\r\n")
                block = b"[" * 65536
                for _ in range(300_000_000 // len(block)):
                    if stop.is_set():
                        break
                    sock.sendall(block)
        except OSError:
            continue  # refused and closed: what should happen


def _chunked_forever(api: str, token: str, stop: threading.Event) -> None:
    """Attack with a valid token: a chunked body that never ends."""
    def body() -> Iterator[bytes]:
        while not stop.is_set():
            yield b"[" * 65536

    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            httpx.put(f"{api}/v1/clusters/x", content=body(), timeout=5,
                      headers={"Authorization": f"Bearer {token}",
                               "Content-Type": "application/json"})


def _slow_body(api: str, token: str, stop: threading.Event) -> None:
    """Attack: a body sent a byte at a time, holding an API connection open."""
    host, port = api.removeprefix("http://").rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"PATCH /v1/clusters/default HTTP/1.1\r\nHost: a\r\nAuthorization: "
                     f"Bearer {token}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100000\r\n\r\n".encode())
        while not stop.wait(0.3):
            sock.sendall(b" ")


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[Running]:
    with _serving(tmp_path, "--api-max-body", "200000") as running:
        yield running


def test_hostile_api_bodies_neither_grow_memory_nor_stall_the_proxy(
        bounded: Running, upstream: Server) -> None:
    """Before the fix a 300 MB unauthenticated body raised RSS by 1.2 GB and stalled the
    proxy for 4 s (the API parsed it, in the proxy's event loop). Also: `--api-max-body`
    sets the limit."""
    gateway = bounded
    big = {"properties": {"allowedFqdnList": [f"h{i}.example.com" for i in range(20000)]}}
    assert httpx.patch(f"{gateway.api}/v1/clusters/default", json=big,
                       headers=gateway.auth).status_code == 413
    allow = {"properties": {"networkRuleCollections": [{
        "name": "loopback", "priority": 100, "action": "allow",
        "rules": [{"name": "up", "destinations": ["127.0.0.0/8"], "protocols": ["TCP"],
                   "ports": [str(upstream.port)], "matchResolvedNames": True}]}]}}
    assert httpx.patch(f"{gateway.api}/v1/clusters/default", json=allow,
                       headers=gateway.auth).status_code == 200
    url = f"http://up.test:{upstream.port}/hello"

    def latencies(client: httpx.Client, n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = time.monotonic()
            assert client.get(url).status_code == 200
            out.append(time.monotonic() - started)
            time.sleep(0.05)
        return sorted(out)

    with httpx.Client(proxy=gateway.proxy, timeout=10) as client:
        quiet = latencies(client, 10)
        rss_before = _rss(gateway.proc.pid)
        stop = threading.Event()
        attackers = [threading.Thread(target=_blast_unauthenticated, args=(gateway.api, stop))
                     for _ in range(4)]
        attackers += [threading.Thread(target=_chunked_forever,
                                       args=(gateway.api, gateway.token, stop))
                      for _ in range(2)]
        attackers += [threading.Thread(target=_slow_body,
                                       args=(gateway.api, gateway.token, stop))
                      for _ in range(8)]
        for t in attackers:
            t.start()
        try:
            time.sleep(1.0)
            loaded = latencies(client, 40)
            rss_after = _rss(gateway.proc.pid)
        finally:
            stop.set()
            for t in attackers:
                t.join(10)
    grew = rss_after - rss_before
    print(f"proxy latency quiet median {quiet[len(quiet) // 2] * 1000:.1f} ms; under API "
          f"attack median {loaded[len(loaded) // 2] * 1000:.1f} ms, max "
          f"{loaded[-1] * 1000:.1f} ms; server RSS +{grew / 2**20:.1f} MiB")
    assert loaded[-1] < 1.5 and loaded[len(loaded) // 2] < 0.3
    assert grew < 64 * 2**20
    assert httpx.get(f"{gateway.api}/healthz").json()["status"] == "ok"


def _start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EGRESSGUARD, "serve", "--audit-writer", "thread", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "EGRESSGUARD_HOME": str(tmp_path)})


def _one_line_failure(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "hint" in errors[0] or "expected" in errors[0], errors[0]
    for word in words:
        assert word in errors[0], errors[0]


def test_port_in_use_is_one_line_with_a_hint_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _one_line_failure(_start(tmp_path, "--listen", f"127.0.0.1:{port}"),
                          "already in use", "--listen")
        _one_line_failure(_start(tmp_path, "--listen", "127.0.0.1:0", "--api-listen",
                                 f"127.0.0.1:{port}"), "already in use", "--api-listen")


def test_unreachable_store_is_one_line_with_a_hint_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections refused
        done = _start(tmp_path, "--store", f"postgresql://postgres@127.0.0.1:{port}/x")
    _one_line_failure(done, "cannot reach the store", "refused")


def test_bad_options_are_one_line_and_exit_2(tmp_path: Path) -> None:
    _one_line_failure(_start(tmp_path, "--listen", "127.0.0.1:0", "--api-listen",
                             "127.0.0.1:0", "--allow-cidr", "not-a-cidr"), "--allow-cidr")


def test_debug_shows_the_traceback_of_a_startup_failure(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        done = _start(tmp_path, "--debug", "--store",
                      f"postgresql://postgres@127.0.0.1:{port}/x")
    assert done.returncode == 2 and "Traceback" in done.stderr
