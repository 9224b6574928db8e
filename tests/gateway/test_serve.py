"""`egressguard serve` as a process: prints where it listens, reloads on SIGHUP, and
shuts down gracefully on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import CLOSED_POLICY, LOOPBACK_POLICY

pytestmark = pytest.mark.timeout(60)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


def _start(args: list[str], home: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([EGRESSGUARD, "serve",
                             "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1",
                                 "EGRESSGUARD_HOME": str(home)})
    assert proc.stdout is not None
    listening = proc.stdout.readline()
    assert "listening on 127.0.0.1:" in listening, proc.stderr.read() if proc.stderr else ""
    return proc, listening.rsplit(":", 1)[1].split()[0]


def test_serve_without_policy_enforces_the_store_default_cluster_deny_all(tmp_path, upstream):
    proc, port = _start([], tmp_path)
    try:
        assert proc.stdout is not None
        assert "REST API on http://127.0.0.1:" in proc.stdout.readline()
        assert "policy store cluster default version 1" in proc.stdout.readline()
        r = httpx.get("http://example.test/", proxy=f"http://127.0.0.1:{port}")
        assert r.status_code == 403 and r.headers["X-Egressguard-Rule"] == "default"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_sighup_reloads_and_sigterm_lets_open_requests_finish(tmp_path: Path, upstream):
    policy = tmp_path / "p.yaml"
    policy.write_text(LOOPBACK_POLICY)
    proc, port = _start(["--policy", str(policy), "--resolve", "up.test=127.0.0.1",
                         "--shutdown-deadline", "5"], tmp_path)
    proxy = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(proxy=proxy) as client:
            assert client.get(f"http://up.test:{upstream.port}/").status_code == 200
            policy.write_text(CLOSED_POLICY)
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            assert client.get(f"http://up.test:{upstream.port}/").status_code == 403
            policy.write_text(LOOPBACK_POLICY)
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            with client.stream("GET", f"http://up.test:{upstream.port}/stream") as r:
                proc.send_signal(signal.SIGTERM)
                body = r.read()
            assert body.count(b"part") == 3  # the open request finished
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_bad_policy_at_startup_exits_2_with_the_reason(tmp_path: Path):
    policy = tmp_path / "bad.yaml"
    policy.write_text("restrict_outbound_network_access: maybe\n")
    proc = subprocess.run([EGRESSGUARD, "serve", "--policy",
                           str(policy)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "restrict_outbound_network_access" in proc.stderr
