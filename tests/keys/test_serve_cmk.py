"""`egressguard serve` with a cluster key (issue 13), as a process with its child audit
writer: batches are sealed under data keys the cluster key wraps (`logs verify` intact),
a disabled key suspends it within 10 s (503 with the reason) and enabling the key
resumes it; both transitions are system events in the store."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from egressguard.audit.schema import batches
from egressguard.audit.system import system_events
from egressguard.keys.provider import WrappedKey
from egressguard.store import Store
from tests.gateway.conftest import LOOPBACK_POLICY, Server, upstream
from tests.gateway.test_serve import EGRESSGUARD
from tests.keys.conftest import MASTER, audit_vault, point_cluster

__all__ = ["upstream"]
pytestmark = pytest.mark.timeout(120)


def within(predicate: Callable[[], bool], bound: float = 10.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < bound, f"not within {bound} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_serve_seals_under_the_cluster_key_and_suspends_and_resumes_with_it(
        tmp_path: Path, upstream: Server) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(tmp_path / "home"),
           "EGRESSGUARD_MASTER_KEY": base64.b64encode(MASTER).decode()}
    env.pop("EGRESSGUARD_AUDIT_KEY", None)
    store = Store(url)
    vault = audit_vault(url, "cmk")
    point_cluster(store.engine, url, "cmk", "default", "test")
    store.close()
    policy = tmp_path / "p.yaml"
    policy.write_text(LOOPBACK_POLICY)
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--no-api", "--store", url,
         "--policy", str(policy), "--resolve", "up.test=127.0.0.1",
         "--key-check-interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, proc.stderr.read() if proc.stderr else ""
        proxy = f"http://127.0.0.1:{line.rsplit(':', 1)[1].split()[0]}"
        target = f"http://up.test:{upstream.port}/?sig=SECRET"

        def status() -> int:
            return httpx.get(target, proxy=proxy, timeout=5).status_code

        assert status() == 200
        engine = create_engine(url)
        with engine.connect() as conn:
            within(lambda: conn.execute(select(batches.c.key_header)).first() is not None)
            header = conn.execute(select(batches.c.key_header)).scalar()
        assert header is not None and WrappedKey.from_bytes(header).key == "audit"
        verify = subprocess.run([EGRESSGUARD, "logs", "verify", "--store", url],
                                capture_output=True, text=True, env=env, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "intact" in verify.stdout

        vault.set_enabled("audit", False)
        within(lambda: status() == 503)
        answer = httpx.get(target, proxy=proxy, timeout=5)
        assert "suspended" in answer.text and "disabled" in answer.text
        verify = subprocess.run([EGRESSGUARD, "logs", "verify", "--store", url],
                                capture_output=True, text=True, env=env, timeout=60)
        assert verify.returncode == 3, verify.stdout + verify.stderr
        assert "CANNOT DECRYPT: cannot decrypt: key vault://cmk/keys/audit/" in verify.stdout
        assert "TAMPERED" not in verify.stdout

        vault.set_enabled("audit", True)
        within(lambda: status() == 200)
        states = [e["state"] for e in reversed(system_events(engine, "default"))]
        assert states == ["Suspended", "Running"]
        engine.dispose()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        vault.close()
    assert code == 0, proc.stderr.read() if proc.stderr else ""


def test_serve_in_store_mode_reads_sealed_versions_and_the_policy_cache_follows_the_key(
        tmp_path: Path, upstream: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's policy versions are sealed; serve (store mode) enforces them; its
    last-known-good cache is removed while suspended and written again on resume."""
    from egressguard.keys.runtime import seal_store
    from egressguard.policy import load_policy_text
    from egressguard.store.schema import VersionRow

    url = f"sqlite:///{tmp_path / 'store.db'}"
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(home),
           "EGRESSGUARD_MASTER_KEY": base64.b64encode(MASTER).decode()}
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", env["EGRESSGUARD_MASTER_KEY"])
    store = Store(url)
    vault = audit_vault(url, "cmk")
    point_cluster(store.engine, url, "cmk", "default", "test")
    keys = seal_store(store)
    store.commit("default", load_policy_text(LOOPBACK_POLICY, "p.yaml"), "t", "loopback")
    with store.engine.connect() as conn:
        newest = conn.execute(select(VersionRow.policy).order_by(
            VersionRow.id.desc())).scalar()
    assert newest is not None and newest.startswith("egressguard-sealed:v1:")
    keys.close()
    store.close()
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--no-api", "--store", url,
         "--resolve", "up.test=127.0.0.1", "--key-check-interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    cache = home / "policy-cache"
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, proc.stderr.read() if proc.stderr else ""
        proxy = f"http://127.0.0.1:{line.rsplit(':', 1)[1].split()[0]}"

        def status() -> int:
            return httpx.get(f"http://up.test:{upstream.port}/", proxy=proxy,
                             timeout=5).status_code

        assert status() == 200      # the sealed loopback policy is in force
        within(lambda: any(cache.glob("*.bin")))
        vault.set_enabled("audit", False)
        within(lambda: status() == 503)
        within(lambda: not any(cache.glob("*.bin")))
        vault.set_enabled("audit", True)
        within(lambda: status() == 200)
        within(lambda: any(cache.glob("*.bin")))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        vault.close()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
