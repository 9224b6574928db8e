"""Store outage, through a running API: `/healthz` says degraded (with the reason), `/readyz`
answers 503, writes answer 503 with `Retry-After` (never 500), one log line per change of
state, and everything works again once the store is back. PostgreSQL really becomes
unreachable (a relay in front of the server is cut); SQLite's file is locked by another
process."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import httpx
import pytest

from egressguard.cli.serve import ApiThread, _bind
from egressguard.control.api import create_app
from egressguard.store import Store
from tests.relay import Relay

pytestmark = pytest.mark.timeout(90)
PATCH = {"properties": {"allowedFqdnList": ["a.example.com"]}}


def serve(store: Store, audit: object = None) -> tuple[ApiThread, str, str]:
    app = create_app(store)
    if audit is not None:
        app.state.audit = audit
    api = ApiThread(app, _bind("127.0.0.1", 0))
    api.start()
    host, port = api.address
    token, _ = store.create_token("admin", "admin", "test")
    return api, f"http://{host}:{port}", token


def state_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "egressguard.control"]


def test_postgresql_outage_degrades_health_and_refuses_writes_with_503(
        pg_relay: tuple[Relay, str], caplog: pytest.LogCaptureFixture) -> None:
    relay, url = pg_relay
    caplog.set_level(logging.INFO, logger="egressguard.control")
    with Store(url) as store:
        api, base, token = serve(store)
        auth = {"Authorization": f"Bearer {token}"}
        try:
            assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
            assert httpx.get(f"{base}/readyz").status_code == 200

            relay.cut()
            started = time.monotonic()
            health = httpx.get(f"{base}/healthz", timeout=30)
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "degraded" and body["store_reachable"] is False
            assert any("store unreachable" in r for r in body["reasons"])
            ready = httpx.get(f"{base}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.headers["retry-after"].isdigit()
            for _ in range(5):
                write = httpx.patch(f"{base}/v1/clusters/default", json=PATCH, headers=auth,
                                    timeout=30)
                assert write.status_code == 503, write.text
                assert int(write.headers["retry-after"]) > 0
                assert write.json()["error"]["code"] == "StoreUnavailable"
                assert httpx.get(f"{base}/healthz", timeout=30).json()["status"] == "degraded"
            assert time.monotonic() - started < 30  # every answer came in seconds
            down = state_lines(caplog)
            assert len(down) == 1 and "unreachable" in down[0], down

            relay.restore()
            deadline = time.monotonic() + 20
            while httpx.get(f"{base}/readyz", timeout=30).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
            write = httpx.patch(f"{base}/v1/clusters/default", json=PATCH, headers=auth)
            assert write.status_code == 200, write.text
            lines = state_lines(caplog)
            assert len(lines) == 2 and "reachable again" in lines[1], lines
            assert not [r for r in caplog.records if r.exc_info]  # no traceback logged
        finally:
            api.stop()


def test_locked_sqlite_store_refuses_writes_with_503_not_500(sqlite_url: str) -> None:
    """Another process holds the write lock (a backup, a stuck tool): policy writes answer
    503 with Retry-After after the busy timeout, and succeed once the lock is gone."""
    path = sqlite_url.removeprefix("sqlite:///")
    with Store(sqlite_url, busy_timeout_ms=300) as store:
        api, base, token = serve(store)
        auth = {"Authorization": f"Bearer {token}"}
        locker = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys, time\n"
             f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
             "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            write = httpx.patch(f"{base}/v1/clusters/default", json=PATCH, headers=auth,
                                timeout=30)
            assert write.status_code == 503, write.text
            assert "locked" in write.json()["error"]["message"]
            assert int(write.headers["retry-after"]) > 0
            locker.kill()
            locker.wait()
            write = httpx.patch(f"{base}/v1/clusters/default", json=PATCH, headers=auth)
            assert write.status_code == 200, write.text
            assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        finally:
            locker.kill()
            api.stop()


class SpoolingAudit:
    """What `serve` puts in `app.state.audit` exposes `degraded` (True while records go to
    the local spool); the API reports whatever it says."""

    degraded = True


def test_healthz_reports_an_audit_log_that_spools_locally(sqlite_url: str) -> None:
    with Store(sqlite_url) as store:
        api, base, _ = serve(store, SpoolingAudit())
        try:
            body = httpx.get(f"{base}/healthz").json()
            assert body["status"] == "degraded" and body["audit_degraded"] is True
            assert any("audit" in r for r in body["reasons"])
            assert httpx.get(f"{base}/readyz").status_code == 200  # the store itself is up
        finally:
            api.stop()
