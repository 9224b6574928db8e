"""Policy versions envelope-encrypted under the cluster's customer-managed key (issue 13):
sealed at rest, read back through the key, old versions (in clear, or under an older key
version) still read after rotation, a store without the key says so (503-class error,
not garbage), a suspended key refuses both reading and writing, and a sealed row moved to
another version does not open."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from egressguard.keys import clusterkeys
from egressguard.keys.runtime import StoreKeys, seal_store
from egressguard.keys.vault import KeyVault
from egressguard.policy import load_policy_text
from egressguard.store import Store
from egressguard.store.schema import VersionRow
from egressguard.store.sealing import PREFIX
from egressguard.store.store import StoreUnavailable
from tests.keys.conftest import MASTER, audit_vault, point_cluster, unique

pytestmark = pytest.mark.timeout(60)


def policy(name: str) -> object:
    return load_policy_text(f"""
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: apps
    priority: 100
    action: allow
    rules:
      - {{name: {name}, targets: [{name}.example.com], protocols: ['https:443']}}
""", "t.yaml")


@pytest.fixture
def keyed(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[Store, KeyVault, StoreKeys]]:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    store = Store(store_url)
    vault = audit_vault(store_url, unique("cmk"))
    store.commit("default", policy("before-the-key"), "t", "clear")  # type: ignore[arg-type]
    point_cluster(store.engine, store_url, vault.name)
    keys = seal_store(store)
    yield store, vault, keys
    keys.close()
    vault.close()
    store.close()


def stored(store: Store) -> dict[int, str]:
    with store.engine.connect() as conn:
        return {r.number: r.policy for r in conn.execute(
            select(VersionRow.number, VersionRow.policy).order_by(VersionRow.number))}


def test_versions_are_sealed_at_rest_and_old_ones_read_after_rotation(
        keyed: tuple[Store, KeyVault, StoreKeys]) -> None:
    store, vault, keys = keyed
    v_old = store.commit("default", policy("first-sealed"), "t", "s")  # type: ignore[arg-type]
    vault.rotate_key("audit")
    envelope = keys("default")
    assert envelope is not None
    envelope.check()  # follows the latest version
    v_new = store.commit("default", policy("after-rotation"), "t", "s")  # type: ignore[arg-type]
    rows = stored(store)
    assert "before-the-key" in rows[v_old.number - 1]          # written in clear, kept so
    for number in (v_old.number, v_new.number):
        assert rows[number].startswith(PREFIX)
        assert "example.com" not in rows[number]
    assert envelope.blob_kid(base64.b64decode(rows[v_old.number][len(PREFIX):])) != \
        envelope.blob_kid(base64.b64decode(rows[v_new.number][len(PREFIX):]))
    texts = [v.text for v in store.versions("default")]
    assert any("after-rotation" in t for t in texts)
    assert any("first-sealed" in t for t in texts)
    assert any("before-the-key" in t for t in texts)
    assert "after-rotation" in store.current("default").text
    # The same content again is recognised through the seal: no new version.
    again = store.commit("default", policy("after-rotation"), "t", "s")  # type: ignore[arg-type]
    assert again.number == v_new.number


def test_without_the_key_or_while_suspended_a_sealed_version_is_refused_not_garbage(
        keyed: tuple[Store, KeyVault, StoreKeys], store_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, vault, keys = keyed
    store.commit("default", policy("sealed"), "t", "s")  # type: ignore[arg-type]
    other = Store(store_url)
    other.seal_with(None)  # a process that has no customer key at all
    try:
        with pytest.raises(StoreUnavailable, match="sealed under a customer-managed key"):
            other.current("default")
        # ... or one whose master key is not the vault's: the key does not unwrap.
        other.seal_with(StoreKeys(store_url))
        monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(bytes(32)).decode())
        with pytest.raises(StoreUnavailable, match="does not open under this master key"):
            other.current("default")
    finally:
        monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
        other.close()
    vault.set_enabled("audit", False)
    envelope = keys("default")
    assert envelope is not None
    envelope.check()
    with pytest.raises(StoreUnavailable, match="suspended"):
        store.current("default")
    with pytest.raises(Exception, match="suspended"):   # nothing is written in clear
        store.commit("default", policy("while-suspended"), "t", "s")  # type: ignore[arg-type]
    assert all("while-suspended" not in text for text in stored(store).values())
    vault.set_enabled("audit", True)
    envelope.check()
    assert "sealed" in store.current("default").text


def test_a_sealed_version_moved_to_another_number_does_not_open(
        keyed: tuple[Store, KeyVault, StoreKeys]) -> None:
    store, _, _ = keyed
    a = store.commit("default", policy("aaa"), "t", "s")  # type: ignore[arg-type]
    b = store.commit("default", policy("bbb"), "t", "s")  # type: ignore[arg-type]
    with store.engine.begin() as conn:
        conn.execute(update(VersionRow).where(VersionRow.number == b.number)
                     .values(policy=stored(store)[a.number]))
    with pytest.raises(StoreUnavailable, match=r"altered|tampered|does not open"):
        store.current("default")


def test_the_cli_applies_and_shows_sealed_versions_and_a_process_without_the_key_cannot(
        sqlite_url: str, tmp_path: Path) -> None:
    """`egressguard apply` / `versions show` as processes: the version is sealed at rest,
    shown in clear with the master key, refused with the reason without it."""
    import os
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "egressguard")
    env = {**os.environ, "EGRESSGUARD_HOME": str(tmp_path / "home"),
           "EGRESSGUARD_MASTER_KEY": base64.b64encode(MASTER).decode()}
    store = Store(sqlite_url)
    vault = audit_vault(sqlite_url, "cmk")
    point_cluster(store.engine, sqlite_url, "cmk")
    vault.close()
    file = tmp_path / "p.yaml"
    file.write_text("restrict_outbound_network_access: Enabled\n"
                    "application_rule_collections:\n"
                    "  - name: apps\n    priority: 100\n    action: allow\n    rules:\n"
                    "      - {name: cli-rule, targets: [cli.example.com], "
                    "protocols: ['https:443']}\n")

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args, "--store", sqlite_url], capture_output=True,
                              text=True, env={**env, **extra}, timeout=60)

    applied = cli("apply", "-f", str(file), "--cluster", "default")
    assert applied.returncode == 0, applied.stderr
    number = max(stored(store))
    assert stored(store)[number].startswith(PREFIX)
    assert "cli.example.com" not in stored(store)[number]
    shown = cli("versions", "show", str(number), "-n", "default")
    assert shown.returncode == 0, shown.stderr
    assert "cli.example.com" in shown.stdout
    wrong = cli("versions", "show", str(number), "-n", "default",
                EGRESSGUARD_MASTER_KEY=base64.b64encode(bytes(32)).decode())
    assert wrong.returncode != 0
    assert "cli.example.com" not in wrong.stdout
    assert "Traceback" not in wrong.stderr
    store.close()


def test_a_key_set_by_another_process_seals_the_very_next_commit(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver caches "no key" (it asks again only after `recheck_s`); a key set
    meanwhile by another process is seen at commit time: never a clear version."""
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    store = Store(store_url)
    keys = StoreKeys(store_url, recheck_s=3600)
    store.seal_with(keys)
    other = Store(store_url)   # "another process": its own engine
    vault = KeyVault(store_url, unique("cmk"), master_key=MASTER)
    try:
        vault.create_key("audit", "RSA", 2048)
        vault.grant("gateway", "get,wrapKey,unwrapKey")
        assert keys("default") is None          # cached: no key (for an hour)
        point_cluster(other.engine, store_url, vault.name)
        v = store.commit("default", policy("right-after-the-key"), "t", "s")  # type: ignore[arg-type]
        assert stored(store)[v.number].startswith(PREFIX)
        assert "right-after-the-key" not in stored(store)[v.number]
        assert "right-after-the-key" in store.current("default").text
    finally:
        vault.close()
        other.close()
        store.close()


def test_a_commit_whose_cluster_key_cannot_be_used_here_is_refused_not_written_in_clear(
        keyed: tuple[Store, KeyVault, StoreKeys], store_url: str) -> None:
    store, vault, _ = keyed
    before = stored(store)
    bare = Store(store_url)
    bare.seal_with(None)                 # a process with no customer key at all
    try:
        with pytest.raises(StoreUnavailable, match=rf"not written: cluster 'default' names "
                           rf"the customer-managed key vault://{vault.name}/keys/audit"):
            bare.commit("default", policy("no-key-here"), "t", "s")  # type: ignore[arg-type]
        vault.set_enabled("audit", False)   # the key exists but is disabled
        bare.seal_with(StoreKeys(store_url))
        with pytest.raises(StoreUnavailable, match=r"not written.*(disabled|suspended)"):
            bare.commit("default", policy("disabled-key"), "t", "s")  # type: ignore[arg-type]
    finally:
        vault.set_enabled("audit", True)
        bare.close()
    assert stored(store) == before


def test_ceilings_are_sealed_at_rest_read_through_the_key_and_bound_to_their_cluster(
        keyed: tuple[Store, KeyVault, StoreKeys], store_url: str) -> None:
    from egressguard.store.schema import CeilingRow, ClusterRow

    store, _, _ = keyed
    ceiling = policy("ceiling-rule")
    store.commit("default", ceiling, "t", "under the ceiling")  # type: ignore[arg-type]
    store.set_ceiling("default", ceiling, "t")  # type: ignore[arg-type]
    with store.engine.connect() as conn:
        [raw] = conn.execute(select(CeilingRow.policy)).scalars().all()
    assert raw.startswith(PREFIX)
    assert "ceiling-rule" not in raw
    found = store.ceiling("default")
    assert found is not None and "ceiling-rule" in found.text
    # The gate still proves writes against it (an unchanged ceiling is not re-read).
    store.commit("default", policy("ceiling-rule"), "t", "again")  # type: ignore[arg-type]
    bare = Store(store_url)
    bare.seal_with(None)
    try:
        with pytest.raises(StoreUnavailable, match="ceiling of default"):
            bare.ceiling("default")
        with pytest.raises(StoreUnavailable, match=r"sealed under|not written"):
            bare.set_ceiling("default", ceiling, "t")  # type: ignore[arg-type]
    finally:
        bare.close()
    # A sealed ceiling copied to another cluster does not open there.
    store.create_cluster("other", policy("ceiling-rule"), "t")  # type: ignore[arg-type]
    clusterkeys.put(store.engine, store_url, MASTER, "other",
                    clusterkeys.get(store.engine, "default").to_arm(), "t")  # type: ignore[union-attr]
    with store.engine.begin() as conn:
        other_id = conn.execute(select(ClusterRow.id).where(ClusterRow.name == "other")
                                ).scalar_one()
        conn.execute(CeilingRow.__table__.insert().values(
            cluster_id=other_id, policy=raw, strict=False, principal="t",
            set_at=store.ceiling("default").set_at))  # type: ignore[union-attr]
    with pytest.raises(StoreUnavailable, match=r"ceiling of other.*(altered|tampered|open)"):
        store.ceiling("other")


def test_identity_metadata_is_sealed_at_rest_under_the_bootstrap_clusters_key(
        keyed: tuple[Store, KeyVault, StoreKeys], store_url: str) -> None:
    from egressguard.identity.store import IdentityStore
    from egressguard.store.schema import IdentityRow

    store, _, _ = keyed
    identities = IdentityStore(store)
    secret, made = identities.create(
        "billing", "t", description="pays the invoices",
        spiffe_ids=["spiffe://prod.example/ns/billing/sa/api"], jwt_subjects=["sa:billing"])
    assert secret and made.description == "pays the invoices"
    with store.engine.connect() as conn:
        [(description, methods, secret_hash)] = conn.execute(select(
            IdentityRow.description, IdentityRow.methods, IdentityRow.secret_hash)).all()
    for raw in (description, methods):
        assert raw.startswith(PREFIX)
        assert "invoices" not in raw and "spiffe://" not in raw and "sa:billing" not in raw
    assert secret not in (secret_hash or "")  # the secret itself: only its scrypt hash
    shown = identities.show("billing")
    assert shown.spiffe_ids == ("spiffe://prod.example/ns/billing/sa/api",)
    assert shown.jwt_subjects == ("sa:billing",)
    # Without the key, the identities do not read (a 503-class error), nor are written.
    bare = Store(store_url)
    bare.seal_with(None)
    try:
        with pytest.raises(StoreUnavailable, match="identity billing"):
            IdentityStore(bare).show("billing")
        with pytest.raises(StoreUnavailable, match=r"identity other.*not written"):
            IdentityStore(bare).create("other", "t", description="x")
    finally:
        bare.close()
    # A sealed field moved to another identity does not open there.
    identities.create("batch", "t", description="nightly")
    with store.engine.begin() as conn:
        conn.execute(update(IdentityRow).where(IdentityRow.name == "batch")
                     .values(description=description))
    with pytest.raises(StoreUnavailable):
        identities.show("batch")
