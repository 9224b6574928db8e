"""The last-known-good policy cache under the cluster's customer-managed key (issue 13):
sealed under that key when the cluster names one (never under the local key), unreadable
without it (a cold start that cannot reach the key serves nothing), and not written at
all while the key is unavailable. Real SQLite store, real built-in vault."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from egressguard.fleet.cache import CMK, PolicyCache
from egressguard.keys.runtime import StoreKeys, seal_store
from egressguard.keys.vault import KeyVault
from egressguard.policy.load import load_policy_text
from egressguard.store import Store
from tests.keys.conftest import MASTER, audit_vault, point_cluster, unique

pytestmark = pytest.mark.timeout(60)
LOCAL = os.urandom(32)
POLICY = """\
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: apps
    priority: 100
    action: allow
    rules:
      - {name: cached-rule, targets: [cached.example.com], protocols: ['https:443']}
"""


@pytest.fixture
def keyed(sqlite_url: str, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[Store, KeyVault, StoreKeys]]:
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    store = Store(sqlite_url)
    vault = audit_vault(sqlite_url, unique("cmk"))
    point_cluster(store.engine, sqlite_url, vault.name)
    keys = seal_store(store)
    store.commit("default", load_policy_text(POLICY, "p.yaml"), "t", "cached")
    yield store, vault, keys
    keys.close()
    vault.close()
    store.close()


def test_the_cache_of_a_keyed_cluster_is_sealed_under_its_key_not_the_local_one(
        keyed: tuple[Store, KeyVault, StoreKeys], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    store, vault, _ = keyed
    cache = PolicyCache(store.key, "default", master=LOCAL, folder=tmp_path,
                        sealer=lambda: store.sealer_for("default"))
    cache.save(store.current("default"))
    raw = cache.path.read_bytes()
    assert raw.startswith(CMK) and b"cached.example.com" not in raw
    assert f"vault://{vault.name}".encode() in raw  # the wrapped key names vault and key
    loaded = cache.load()
    assert loaded is not None and "cached.example.com" in loaded.text
    # A cold start (no store, so no key): the local key does not open it; fail closed.
    cold = PolicyCache(store.key, "default", master=LOCAL, folder=tmp_path)
    with caplog.at_level(logging.ERROR, logger="egressguard.fleet"):
        assert cold.load() is None
    assert f"sealed under its customer-managed key vault://{vault.name}/keys/audit/" \
        in caplog.text and "fail closed" in caplog.text


def test_while_the_key_is_unavailable_the_cache_is_removed_not_written_in_clear(
        keyed: tuple[Store, KeyVault, StoreKeys], tmp_path: Path) -> None:
    store, vault, keys = keyed
    version = store.current("default")
    cache = PolicyCache(store.key, "default", master=LOCAL, folder=tmp_path,
                        sealer=lambda: store.sealer_for("default"))
    cache.save(version)
    assert cache.path.exists()
    vault.set_enabled("audit", False)
    envelope = keys("default")
    assert envelope is not None
    envelope.check()                       # suspended
    cache.save(version)
    assert not cache.path.exists()
    vault.set_enabled("audit", True)
    envelope.check()
    cache.save(version)
    assert cache.path.read_bytes().startswith(CMK)


def test_a_cluster_without_a_key_still_caches_under_the_local_key(
        sqlite_url: str, tmp_path: Path) -> None:
    with Store(sqlite_url) as store:
        store.commit("default", load_policy_text(POLICY, "p.yaml"), "t", "clear")
        cache = PolicyCache(store.key, "default", master=LOCAL, folder=tmp_path,
                            sealer=lambda: store.sealer_for("default"))
        cache.save(store.current("default"))
    raw = cache.path.read_bytes()
    assert not raw.startswith(CMK) and b"cached.example.com" not in raw
    loaded = PolicyCache(store.key, "default", master=LOCAL, folder=tmp_path).load()
    assert loaded is not None and "cached.example.com" in loaded.text
