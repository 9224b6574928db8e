"""A gateway started while PostgreSQL is down enforces its last-known-good policy from
the encrypted local cache, and catches up when the store returns; with no cache it
refuses to start (fail closed)."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from egressguard.audit.db import make_engine
from egressguard.audit.schema import events
from egressguard.fleet.cache import PolicyCache
from egressguard.identity.store import IdentityStore
from egressguard.policy.load import load_policy_text
from egressguard.store import Store, Version
from egressguard.store.store import default_policy
from egressguard.store.urls import bus_key, normalize_url
from tests.fleet.conftest import AUDIT_KEY, EGRESSGUARD, serve, stop
from tests.gateway.served import LOOPBACK_ONLY, exchange
from tests.relay import Relay

pytestmark = pytest.mark.timeout(120)
WEB_ONLY = LOOPBACK_ONLY.replace("    priority: 100\n",  # the same rule, for `web` only
                                 "    priority: 100\n    identities: [web]\n")


def _status(port: int, upstream: int, credential: str = "") -> bytes:
    auth = f"Proxy-Authorization: {credential}\r\n" if credential else ""
    head = exchange(port, f"GET http://127.0.0.1:{upstream}/ HTTP/1.1\r\n"
                          f"Host: 127.0.0.1:{upstream}\r\n{auth}\r\n".encode(), timeout=10)
    return head.split(b"\r\n", 1)[0]


def test_gateway_started_while_the_store_is_down_enforces_the_cached_policy_and_catches_up(
        tmp_path: Path, pg_relay: tuple[Relay, str], pg_url: str,
        closing_upstream: int) -> None:
    cut, relayed = pg_relay
    with Store(pg_url) as store:
        store.commit("default", load_policy_text(LOOPBACK_ONLY), "test", "loopback")
    home = tmp_path / "gw"
    proc, port = serve(home, relayed, "--no-api")
    try:
        assert b" 403 " not in _status(port, closing_upstream)  # version 2 in force
    finally:
        stop(proc)
    cached = list((home / "policy-cache").iterdir())
    assert len(cached) == 1 and stat.S_IMODE(cached[0].stat().st_mode) == 0o600
    assert b"loopback-one" not in cached[0].read_bytes()  # sealed, not clear text

    cut.cut()
    proc, port = serve(home, relayed, "--no-api")
    try:
        assert b" 403 " not in _status(port, closing_upstream), \
            "the cached (last-known-good) policy is not in force"
        with Store(pg_url) as store:  # changed while this gateway cannot see the store
            store.commit("default", default_policy(), "test", "deny all again")
        time.sleep(1.0)
        assert b" 403 " not in _status(port, closing_upstream)
        restored_at = time.time()
        cut.restore()
        deadline = time.monotonic() + 20
        while b" 403 " not in _status(port, closing_upstream):
            assert time.monotonic() < deadline, "did not catch up with the store"
            time.sleep(0.2)
        assert proc.poll() is None
    finally:
        stop(proc)
    log = (home / "log").read_text()
    assert "last-known-good" in log and "Traceback" not in log, log
    engine = make_engine(pg_url)  # what was audited during the outage reached the store
    with engine.connect() as conn:
        stored = int(conn.execute(select(func.count()).select_from(events).where(
            events.c.time < restored_at)).scalar() or 0)
    engine.dispose()
    assert stored >= 1 + 2, f"only {stored} audit events from before the store returned"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_identities_reach_a_gateway_started_while_the_store_is_down_once_it_answers(
        tmp_path: Path, pg_relay: tuple[Relay, str], pg_url: str, closing_upstream: int,
        workers: str) -> None:
    """Until the store answers no identity is known, so the identity-scoped rule matches
    nobody (fail closed); then the identities arrive without a restart."""
    cut, relayed = pg_relay
    with Store(pg_url) as store:
        store.commit("default", load_policy_text(WEB_ONLY), "test", "web only")
        secret, _ = IdentityStore(store).create("web", "test")
        version = store.current("default")
    credential = "Basic " + base64.b64encode(f"web:{secret}".encode()).decode()
    home = tmp_path / "gw"
    PolicyCache(bus_key(normalize_url(relayed)), "default",  # as a run with the store did
                master=base64.b64decode(AUDIT_KEY), folder=home / "policy-cache"
                ).save(version)
    cut.cut()
    proc, port = serve(home, relayed, "--no-api", "--workers", workers)
    try:
        refused = _status(port, closing_upstream, credential)
        assert b" 403 " in refused or b" 407 " in refused, refused
        cut.restore()
        deadline = time.monotonic() + 30
        while b" 502 " not in _status(port, closing_upstream, credential):
            assert time.monotonic() < deadline, "the identities never arrived"
            time.sleep(0.2)
        assert b" 403 " in _status(port, closing_upstream)  # anonymous: still denied
    finally:
        stop(proc)
    assert "Traceback" not in (home / "log").read_text()


def test_gateway_with_no_cache_does_not_start_while_the_store_is_down(
        tmp_path: Path, pg_relay: tuple[Relay, str]) -> None:
    cut, relayed = pg_relay
    cut.cut()
    home = tmp_path / "cold"
    home.mkdir(mode=0o700)
    done = subprocess.run(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--no-api", "--store", relayed],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "EGRESSGUARD_HOME": str(home), "EGRESSGUARD_AUDIT_KEY": AUDIT_KEY})
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot reach the store"), done.stderr
    assert "Traceback" not in done.stderr


def test_a_cold_start_that_cannot_reach_the_cluster_key_serves_nothing(
        tmp_path: Path, pg_relay: tuple[Relay, str], pg_url: str,
        monkeypatch: pytest.MonkeyPatch, closing_upstream: int) -> None:
    """The cluster names a customer-managed key: the gateway's last-known-good cache is
    sealed under it; with the store (and so the built-in vault) down, the next start
    does not decrypt the cache with a local key: it does not start, and says why."""
    import base64

    from egressguard.fleet.cache import CMK
    from egressguard.keys.runtime import seal_store
    from tests.keys.conftest import MASTER, audit_vault, point_cluster, unique

    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    cut, relayed = pg_relay
    vault = audit_vault(pg_url, unique("cmk"))
    with Store(pg_url) as store:
        point_cluster(store.engine, pg_url, vault.name)
        keys = seal_store(store)
        store.commit("default", load_policy_text(LOOPBACK_ONLY), "test", "loopback")
        keys.close()
    home = tmp_path / "gw"
    try:
        proc, port = serve(home, relayed, "--no-api")
        try:
            assert b" 403 " not in _status(port, closing_upstream)
        finally:
            stop(proc)
        [cached] = list((home / "policy-cache").iterdir())
        assert cached.read_bytes().startswith(CMK)   # under the cluster key, not the local
        cut.cut()
        done = subprocess.run(
            [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--no-api", "--store", relayed],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "EGRESSGUARD_HOME": str(home),
                 "EGRESSGUARD_AUDIT_KEY": AUDIT_KEY})
        assert done.returncode == 2, done.stdout + done.stderr
        assert "listening on" not in done.stdout
        assert "sealed under its customer-managed key" in done.stderr, done.stderr
        assert "fail closed" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        cut.restore()
        vault.close()


def _version(text: str = LOOPBACK_ONLY) -> Version:
    return Version("default", 7, load_policy_text(text), text, "alice",
                   datetime.now(UTC), "loopback")


def test_cache_round_trips_and_refuses_tampering_or_another_cluster(tmp_path: Path) -> None:
    key = os.urandom(32)
    cache = PolicyCache("postgresql://db/x", "default", master=key, folder=tmp_path)
    cache.save(_version())
    loaded = cache.load()
    assert loaded is not None and loaded.number == 7 and loaded.text == LOOPBACK_ONLY
    other = PolicyCache("postgresql://db/x", "prod", master=key, folder=tmp_path)
    os.replace(cache.path, other.path)  # a file moved under another cluster's name
    assert other.load() is None
    cache.save(_version())
    data = bytearray(cache.path.read_bytes())
    data[-1] ^= 1
    cache.path.write_bytes(bytes(data))
    assert cache.load() is None
    cache.save(_version())
    assert PolicyCache("postgresql://db/x", "default", master=os.urandom(32),
                       folder=tmp_path).load() is None  # another key


def test_follow_with_cache_saves_the_version_in_force(store_url: str) -> None:
    from egressguard.source import follow

    with Store(store_url) as store:
        store.commit("default", load_policy_text(LOOPBACK_ONLY), "test", "loopback")
        with follow(None, "default", store, cache=True) as live:
            assert live.feed is not None and live.feed.cache is not None
            cached = live.feed.cache.load()
        assert cached is not None and cached.number == store.latest_number("default")
