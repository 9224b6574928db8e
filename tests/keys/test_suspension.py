"""Revocation -> Suspended -> Running through a running gateway (issue 13 item 5): the
cluster's key disabled (or the gateway identity's unwrapKey revoked) -> within 10 s new
requests get 503 with the reason and open tunnels are closed, the envelope's data keys
are wiped; access back -> serving again within 10 s. Both transitions are system events
in the store; the audit log writes nothing while suspended (it could not seal)."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from egressguard.audit.log import AuditLog
from egressguard.audit.system import SystemEvents, system_events
from egressguard.keys.envelope import RUNNING, SUSPENDED
from egressguard.keys.runtime import ClusterKey, bind
from egressguard.keys.vault import KeyVault
from egressguard.store import Store
from tests.gateway.conftest import (  # the gateway tests' real servers
    Running,
    Server,
    connect_tunnel,
    echo,
    gateway_factory,
    raw,
    upstream,
)
from tests.keys.conftest import MASTER, audit_vault, point_cluster

__all__ = ["echo", "gateway_factory", "upstream"]
pytestmark = pytest.mark.timeout(120)
BOUND = 10.0
INTERVAL = 1.0


@pytest.fixture
def cluster_key(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[tuple[KeyVault, ClusterKey]]:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    store = Store(sqlite_url)
    vault = audit_vault(sqlite_url, "cmk")
    point_cluster(store.engine, sqlite_url, "cmk", "default", "test")
    key = ClusterKey.open(sqlite_url, "default", check_interval=INTERVAL)
    assert key is not None and key.envelope.state == RUNNING
    yield vault, key
    key.close()
    vault.close()
    store.close()


def within(predicate: Callable[[], bool], bound: float = BOUND) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < bound, f"not within {bound} s"
        time.sleep(0.05)
    return time.monotonic() - start


def get(running: Running, upstream: Server) -> bytes:
    target = f"127.0.0.1:{upstream.port}"
    return raw(running.port, f"GET http://{target}/ok HTTP/1.1\r\nHost: {target}\r\n"
               "Connection: close\r\n\r\n".encode())


def closed(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


@pytest.mark.parametrize("how", ["disable", "revoke-unwrapKey"])
def test_revoked_key_suspends_the_gateway_within_10_s_and_access_back_resumes_it(
        how: str, cluster_key: tuple[KeyVault, ClusterKey], sqlite_url: str,
        gateway_factory: Callable[..., Running], upstream: Server, echo: Server) -> None:
    vault, key = cluster_key
    log = AuditLog(sqlite_url, envelope=key.envelope)
    running = gateway_factory(sink=log)
    events = SystemEvents(log.engine, "default", "test-gateway")
    bind(key, [running.gateway.checkpoint], events.record)
    try:
        assert get(running, upstream).startswith(b"HTTP/1.1 200")
        tunnel = connect_tunnel(running.port, f"127.0.0.1:{echo.port}")
        tunnel.sendall(b"ping")
        assert tunnel.recv(4) == b"ping"
        revoke, restore = {
            "disable": (lambda: vault.set_enabled("audit", False),
                        lambda: vault.set_enabled("audit", True)),
            "revoke-unwrapKey": (lambda: vault.revoke("gateway", "unwrapKey"),
                                 lambda: vault.grant("gateway", "unwrapKey")),
        }[how]
        log.flush()
        written = log.acknowledged
        revoke()
        down = within(lambda: running.gateway.checkpoint.suspended is not None)
        within(lambda: closed(tunnel), 2.0)      # the open tunnel is closed
        answer = get(running, upstream)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"suspended" in answer
        assert key.envelope.state == SUSPENDED
        assert key.envelope._writer is None and not key.envelope._cache  # wiped
        assert log.acknowledged == written   # nothing recorded while suspended
        restore()
        up = within(lambda: running.gateway.checkpoint.suspended is None)
        assert get(running, upstream).startswith(b"HTTP/1.1 200")
        log.flush()
        states = [e["state"] for e in reversed(system_events(log.engine, "default"))]
        assert states == [SUSPENDED, RUNNING]
        [suspended_event] = [e for e in system_events(log.engine) if e["state"] == SUSPENDED]
        assert suspended_event["key"].startswith("vault://cmk/keys/audit/")
        print(f"{how}: suspended after {down:.2f} s, running again after {up:.2f} s")
        tunnel.close()
    finally:
        log.close()


def test_an_unreachable_key_store_fails_the_gateway_closed(
        gateway_factory: Callable[..., Running], upstream: Server) -> None:
    """The vault's store does not answer: 503 naming it, not a fallback to any key."""
    from egressguard.keys.cluster import KeyVaultProperties
    from tests.keys.conftest import UNREACHABLE_PG

    key = ClusterKey(UNREACHABLE_PG, "default",
                     KeyVaultProperties("audit", "vault://cmk", None, "gateway"), MASTER,
                     check_interval=INTERVAL)
    key.envelope.start()
    running = gateway_factory()
    try:
        bind(key, [running.gateway.checkpoint])
        answer = get(running, upstream)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"unreachable" in answer
    finally:
        key.close()
