"""`keys.runtime.ClusterKey`: the cluster's envelope at run time follows the cluster's
`keyVaultProperties` by itself within its check interval: an unset keyVersion follows a
rotation, a new key URI wraps new data keys, and what the old ones wrapped stays
readable without re-encryption."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from egressguard.keys.runtime import ClusterKey
from egressguard.keys.vault import KeyVault
from egressguard.store import Store
from tests.keys.conftest import MASTER, point_cluster

pytestmark = pytest.mark.timeout(60)
INTERVAL = 0.5


def within(predicate: Callable[[], bool], bound: float = 10.0) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < bound, f"not within {bound} s"
        time.sleep(0.05)


def test_the_cluster_key_follows_rotation_and_a_new_key_uri_within_its_interval(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    store = Store(sqlite_url)
    first, second = (KeyVault(sqlite_url, name, master_key=MASTER) for name in ("a", "b"))
    for vault in (first, second):
        vault.create_key("audit", "RSA", 2048)
        vault.grant("gateway", "get,wrapKey,unwrapKey")

    def point_at(vault: KeyVault) -> None:
        point_cluster(store.engine, sqlite_url, vault.name)

    point_at(first)
    key = ClusterKey.open(sqlite_url, "default", check_interval=INTERVAL)
    assert key is not None
    env = key.envelope
    try:
        old = env.seal(b"before rotation")
        newer = first.rotate_key("audit").latest
        within(lambda: env.blob_kid(env.seal(b"x")).endswith(f"/{newer}"))
        rotated = env.seal(b"after rotation")
        point_at(second)
        within(lambda: env.blob_kid(env.seal(b"x")).startswith("vault://b/"))
        moved = env.seal(b"after the new key URI")
        assert [env.open(b) for b in (old, rotated, moved)] == [
            b"before rotation", b"after rotation", b"after the new key URI"]
        assert env.blob_kid(old).startswith("vault://a/")
    finally:
        key.close()
        first.close()
        second.close()
        store.close()
