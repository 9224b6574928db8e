"""A policy file edited in place (truncated, then written) never opens the gateway: while
the file is empty, duplicated or otherwise broken, `serve --policy F` keeps the policy in
force and says in its log why the reload was rejected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(90)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")

POLICY = """\
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: lift-guard
    rules:
      - {name: loopback, destinations: [127.0.0.1/32], protocols: [TCP]}
application_rule_collections:
  - name: apps
    rules:
      - {name: allowed, targets: [allowed.test], protocols: ['http:*']}
"""
BROKEN = [
    "",                                                               # truncated
    POLICY[:POLICY.index("127.0.0.1") + 5],                          # cut mid-write
    POLICY + "restrict_outbound_network_access: Disabled\n",          # duplicate key
    "---\nrestrict_outbound_network_access: Enabled\n---\n{}\n",      # two documents
    "- restrict_outbound_network_access\n",                           # not a mapping
    "a: " + "[" * 80 + "]" * 80 + "\n",                               # too deep
]


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hosts: Counter[str] = Counter()

    def do_GET(self) -> None:
        self.hosts[self.headers.get("Host", "").split(":")[0]] += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def counting_upstream() -> Iterator[tuple[int, Counter[str]]]:
    _Counting.hosts = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Counting.hosts
    server.shutdown()
    server.server_close()


def test_truncate_then_write_never_lets_a_denied_host_through(
        tmp_path: Path, counting_upstream: tuple[int, Counter[str]]) -> None:
    up_port, hits = counting_upstream
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    stderr = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--policy", str(policy), "--listen", "127.0.0.1:0",
         "--no-api", "--no-audit", "--no-system-resolver",
         "--resolve", "allowed.test=127.0.0.1", "--resolve", "denied.test=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=stderr, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(tmp_path)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        proxy = f"http://127.0.0.1:{line.rsplit(':', 1)[1].split()[0]}"
        statuses: Counter[tuple[int, str]] = Counter()
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(proxy=proxy, timeout=10) as client:
                while not stop.is_set():
                    r = client.get(f"http://denied.test:{up_port}/")
                    statuses[r.status_code, r.headers.get("X-Egressguard-Rule", "")] += 1

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            for broken in BROKEN:
                with policy.open("w") as f:  # truncate...
                    f.flush()
                    time.sleep(0.4)  # ...long enough for the watcher (0.25 s) to see it
                    f.write(broken)
                time.sleep(0.4)
                policy.write_text(POLICY)
                time.sleep(0.3)
        finally:
            stop.set()
            worker.join(15)
        with httpx.Client(proxy=proxy, timeout=10) as client:
            assert client.get(f"http://allowed.test:{up_port}/").status_code == 200
        assert hits["denied.test"] == 0
        # Every refusal came from the restricted policy ("default"), never from an
        # unrestricted one loaded by mistake (whose refusals here would name only the
        # loopback guard, as the test upstream is on loopback).
        assert set(statuses) == {(403, "default")} and statuses[403, "default"] > 20, statuses
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    stderr.seek(0)
    log = stderr.read()
    assert "Traceback" not in log
    rejected = [line for line in log.splitlines() if "policy reload rejected" in line]
    assert rejected, log
    for reason in ("the policy is empty", "not valid YAML", "duplicate key",
                   "more than one document", "must be a mapping", "nested deeper than 64"):
        assert reason in log, reason
