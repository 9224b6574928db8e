"""The fleet's singleton jobs beyond retention: the key check (a cluster whose key is
disabled turns Suspended, and back) and scheduled recommendations (each cluster's
least-privilege policy and its diff written whole); both run by the leader only, and a
second gateway takes over when the leader is killed (real `serve` processes, PostgreSQL)."""

from __future__ import annotations

import base64
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from egressguard import metrics
from egressguard.audit.events import DecisionEvent
from egressguard.audit.log import AuditLog
from egressguard.fleet.jobs import key_check_job, recommendation_job
from egressguard.keys import clusterkeys
from egressguard.keys.vault import KeyVault
from egressguard.policy import load_policy_text
from egressguard.store import Store
from tests.fleet.conftest import serve, stop

pytestmark = pytest.mark.timeout(120)
MASTER = bytes(range(32))


def _suspended(cluster: str) -> float:
    return float(metrics.CLUSTER_KEY_SUSPENDED.labels(cluster)._value.get())


def test_key_check_suspends_a_cluster_whose_key_is_disabled_and_resumes_it(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    caplog.set_level(logging.WARNING, logger="egressguard.fleet")
    vault = KeyVault(store_url, f"cmk{os.getpid()}", master_key=MASTER)
    try:
        vault.create_key("audit", "RSA", 2048)
        vault.grant("gateway", "get,wrapKey,unwrapKey")
        with Store(store_url) as store:
            store.create_cluster("keyed", load_policy_text("report_only: true\n"), "t")
            clusterkeys.put(store.engine, store_url, MASTER, "keyed", {
                "keyName": "audit", "keyVaultUri": f"vault://{vault.name}",
                "userIdentity": "gateway"}, "t")
        job = key_check_job(store_url, 60)
        job.run()
        assert _suspended("keyed") == 0 and not caplog.records
        vault.set_enabled("audit", False)
        job.run()
        assert _suspended("keyed") == 1
        (warned,) = [r.getMessage() for r in caplog.records]
        assert "cluster keyed is Suspended" in warned and "disabled" in warned
        job.run()   # still suspended: said once, not once per check
        assert len(caplog.records) == 1
        vault.set_enabled("audit", True)
        job.run()
        assert _suspended("keyed") == 0
        assert "Running again" in caplog.records[-1].getMessage()
    finally:
        vault.close()


def _observed(host: str, cluster: str = "default") -> DecisionEvent:
    """A call report-only let through (what a recommendation is made from)."""
    return DecisionEvent(time=time.time(), cluster=cluster, kind="connect", host=host,
                         port=443, verdict="deny", permitted=True, layer="default",
                         rule="default:deny", reason="restricted", client_address="10.0.0.7")


def test_scheduled_recommendation_writes_each_clusters_policy_and_diff(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    with Store(store_url) as store, AuditLog(store_url) as audit:
        store.create_cluster("other", load_policy_text(
            "restrict_outbound_network_access: true\n"), "t")
        for host in ("pypi.org", "files.pythonhosted.org"):
            audit.emit(_observed(host))
        audit.emit(_observed("github.com", "other"))
        audit.flush()
    out = tmp_path / "recommendations"
    recommendation_job(store_url, 60, 3600, out).run()
    assert sorted(p.name for p in out.iterdir()) == [
        "default.diff", "default.yaml", "other.diff", "other.yaml"]
    policy = load_policy_text((out / "default.yaml").read_text(), "default.yaml")
    assert policy.restrict_outbound_network_access
    text = (out / "default.yaml").read_text()
    assert "pypi.org" in text and "github.com" not in text
    assert "pypi.org" in (out / "default.diff").read_text()
    assert "github.com" in (out / "other.yaml").read_text()


def test_only_the_leader_writes_recommendations_and_the_other_takes_over(
        pg_url: str, tmp_path: Path) -> None:
    with Store(pg_url) as store, AuditLog(pg_url) as audit:
        store.current("default")
        audit.emit(_observed("pypi.org"))
        audit.flush()
    outs = [tmp_path / f"out{i}" for i in range(2)]
    procs = [serve(tmp_path / f"gw{i}", pg_url, "--no-api", "--recommend-every", "1s",
                   "--recommend-window", "1h", "--recommend-out", str(outs[i]),
                   "--key-check-every", "1s")[0] for i in range(2)]
    try:
        deadline = time.monotonic() + 20
        while not any((o / "default.yaml").exists() for o in outs):
            assert time.monotonic() < deadline, "no member wrote a recommendation"
            time.sleep(0.1)
        time.sleep(2.5)   # a few more turns: still only the leader writes
        written = [(o / "default.yaml").exists() for o in outs]
        assert written.count(True) == 1, written
        leader = written.index(True)
        os.kill(procs[leader].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        follower = outs[1 - leader] / "default.yaml"
        while not follower.exists():
            assert time.monotonic() - killed_at < 10, "no takeover within 10 s"
            time.sleep(0.1)
        took = time.monotonic() - killed_at
        print(f"\nrecommendation job takeover after kill -9 of the leader: {took:.1f} s")
        assert took < 5
        assert "pypi.org" in follower.read_text()
    finally:
        for proc in procs:
            stop(proc)
