"""Envelope encryption: rotation without re-encryption, revocation -> Suspended -> Running,
"cannot decrypt" told apart from "tampered". Real providers: the built-in vault on SQLite
(and SoftHSM2 for the revocation cycle)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from egressguard.keys.envelope import (
    RUNNING,
    SUSPENDED,
    CannotDecrypt,
    Envelope,
    StateChange,
    SuspendedError,
    Tampered,
    split_blob,
)
from egressguard.keys.provider import WrappedKey
from egressguard.keys.vault import KeyVault
from tests.keys.conftest import MASTER, unique

pytestmark = pytest.mark.timeout(90)
INTERVAL = 0.2  # seconds between checks in these tests (the default is 5)
BOUND = 10.0  # the bound for noticing revocation and recovery


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[KeyVault]:
    v = KeyVault(f"sqlite:///{tmp_path / 'store.db'}", "cmk", master_key=MASTER,
                 purge_protection=False)
    v.grant("gateway", "get,wrapKey,unwrapKey")
    yield v
    v.close()


def wait_for(predicate: Callable[[], bool], bound: float = BOUND) -> float:
    """Seconds until `predicate` holds; fails past `bound`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < bound, f"not within {bound} s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_seal_opens_and_the_blob_names_key_and_version(vault: KeyVault) -> None:
    info = vault.create_key("audit", "RSA", 2048)
    env = Envelope(vault.client("gateway"), "audit").start()
    blob = env.seal(b"client 10.0.0.7 GET /secret?sig=abc", b"row-1")
    assert b"sig=abc" not in blob
    assert env.open(blob, b"row-1") == b"client 10.0.0.7 GET /secret?sig=abc"
    assert env.blob_kid(blob) == f"vault://cmk/keys/audit/{info.latest}"
    with pytest.raises(Tampered):
        env.open(blob, b"row-2")  # associated data differs: altered, not a key problem
    env.stop()


def test_a_batch_sealer_wraps_one_data_key_per_n_records(vault: KeyVault) -> None:
    vault.create_key("audit", "AES", 256)
    env = Envelope(vault.client("gateway"), "audit", records_per_data_key=3).start()
    keys = []
    for i in range(7):
        key = env.writer_key()
        keys.append(key.key_id)
        key.seal(b"record %d" % i)
    assert len(set(keys)) == 3 and keys[:3] == [keys[0]] * 3
    batch = env.writer_key(records=3)  # an inline sealer reserves its batch
    assert batch.key_id not in keys and env.writer_key(records=1).key_id != batch.key_id
    nonce = os.urandom(12)
    sealed = nonce + batch.encrypt(nonce, b"in a batch", b"aad")
    reader = env.reader_key(batch.wrapped)
    assert reader.open(sealed, b"aad") == b"in a batch"
    assert reader.subkey(b"chain v1") == batch.subkey(b"chain v1") != batch.subkey(b"x")
    env.stop()


def test_rotation_wraps_new_data_keys_and_old_blobs_open_without_reencryption(
        vault: KeyVault) -> None:
    first = vault.create_key("audit", "AES", 256)
    env = Envelope(vault.client("gateway"), "audit", check_interval=INTERVAL).start()
    old = env.seal(b"before rotation")
    rotated = vault.rotate_key("audit")
    took = wait_for(lambda: env.blob_kid(env.seal(b"probe")).endswith(rotated.latest))
    assert took < BOUND
    new = env.seal(b"after rotation")
    assert env.blob_kid(old).endswith(first.latest)
    assert env.blob_kid(new).endswith(rotated.latest)
    # A fresh reader (another gateway, no cache) opens both.
    reader = Envelope(vault.client("gateway"), "audit").start()
    assert reader.open(old) == b"before rotation" and reader.open(new) == b"after rotation"
    env.stop()
    reader.stop()


def test_a_pinned_version_does_not_follow_the_latest(vault: KeyVault) -> None:
    first = vault.create_key("audit", "AES", 256)
    env = Envelope(vault.client("gateway"), "audit", first.latest).start()
    vault.rotate_key("audit")
    env.check()
    assert env.blob_kid(env.seal(b"x")).endswith(first.latest)
    env.stop()


def test_a_new_key_uri_wraps_from_then_on_and_old_vault_blobs_stay_readable(
        vault: KeyVault, tmp_path: Path) -> None:
    vault.create_key("audit", "AES", 256)
    other = KeyVault(f"sqlite:///{tmp_path / 'other.db'}", "hsm-backed", master_key=MASTER)
    other.grant("gateway", "get,wrapKey,unwrapKey")
    other.create_key("cmk2", "RSA", 2048)
    env = Envelope(vault.client("gateway"), "audit").start()
    old = env.seal(b"old vault")
    env.configure(other.client("gateway"), "cmk2")
    assert env.check() == RUNNING
    new = env.seal(b"new vault")
    assert env.blob_kid(new).startswith("vault://hsm-backed/keys/cmk2/")
    assert env.open(old) == b"old vault" and env.open(new) == b"new vault"
    # Disabling the old key leaves the cluster running; only its blobs cannot decrypt.
    vault.set_enabled("audit", False)
    env.check()
    assert env.state == RUNNING
    reader = Envelope(other.client("gateway"), "cmk2").start()
    reader.configure(vault.client("gateway"), "audit")  # knows the old vault for reads
    reader.configure(other.client("gateway"), "cmk2")
    with pytest.raises(CannotDecrypt, match="unavailable \\(disabled\\)"):
        reader.open(old)
    assert reader.open(new) == b"new vault"
    env.stop()
    reader.stop()
    other.close()


def test_wrong_key_reads_as_cannot_decrypt_and_altered_data_as_tampered(
        vault: KeyVault) -> None:
    a = vault.create_key("key-a", "AES", 256)
    b = vault.create_key("key-b", "AES", 256)
    env = Envelope(vault.client("gateway"), "key-a").start()
    blob = env.seal(b"payload")
    wrapped, _sealed = split_blob(blob)
    ref = WrappedKey.from_bytes(wrapped)
    assert ref.version == a.latest
    other = WrappedKey(ref.vault_uri, "key-b", b.latest, ref.alg, ref.ciphertext).to_bytes()
    with pytest.raises(CannotDecrypt, match=f"key vault://cmk/keys/key-b/{b.latest}"):
        env.reader_key(other)
    altered = bytearray(blob)
    altered[-1] ^= 1
    with pytest.raises(Tampered):
        env.open(bytes(altered))
    for garbage in (b"", b"EGE1", blob[:20], b"EGE1\x00\x05hello" + bytes(40)):
        with pytest.raises(Tampered):
            env.open(garbage)
    env.stop()


def _cycle(env: Envelope, changes: list[StateChange], revoke: Callable[[], None],
           restore: Callable[[], None], reason: str) -> tuple[float, float]:
    blob = env.seal(b"secret")
    revoke()
    down = wait_for(lambda: env.state == SUSPENDED)
    assert reason in env.reason
    with pytest.raises(SuspendedError):
        env.seal(b"more")
    with pytest.raises(SuspendedError):
        env.open(blob)
    assert env._writer is None and not env._cache  # data keys dropped
    restore()
    up = wait_for(lambda: env.state == RUNNING)
    assert env.open(blob) == b"secret"
    assert [c.state for c in changes][-2:] == [SUSPENDED, RUNNING]
    record = changes[-2].record()
    assert record["kind"] == "system" and record["state"] == SUSPENDED
    assert reason in record["reason"] and "secret" not in str(record)
    return down, up


@pytest.mark.parametrize("how", ["disable", "revoke-unwrapKey", "revoke-get", "delete"])
def test_revocation_suspends_within_10_s_and_access_back_resumes_within_10_s(
        vault: KeyVault, how: str) -> None:
    vault.create_key("audit", "RSA", 2048)
    changes: list[StateChange] = []
    env = Envelope(vault.client("gateway"), "audit", check_interval=INTERVAL,
                   on_state_change=changes.append).start()
    assert env.state == RUNNING and changes[-1].previous == SUSPENDED
    actions = {
        "disable": (lambda: vault.set_enabled("audit", False),
                    lambda: vault.set_enabled("audit", True), "disabled"),
        "revoke-unwrapKey": (lambda: vault.revoke("gateway", "unwrapKey"),
                             lambda: vault.grant("gateway", "unwrapKey"), "lacks unwrapKey"),
        "revoke-get": (lambda: vault.revoke("gateway", "get"),
                       lambda: vault.grant("gateway", "get"), "access denied"),
        "delete": (lambda: vault.delete_key("audit"),
                   lambda: vault.recover_key("audit"), "deleted"),
    }
    revoke, restore, reason = actions[how]
    down, up = _cycle(env, changes, revoke, restore, reason)
    env.stop()
    print(f"{how}: suspended after {down:.2f} s, running after {up:.2f} s")


def test_an_hsm_key_disabled_on_the_token_suspends_and_resumes(softhsm: object) -> None:
    from egressguard.keys.pkcs11 import Pkcs11Provider

    hsm = Pkcs11Provider(softhsm.library, softhsm.token, softhsm.pin)  # type: ignore[attr-defined]
    name = unique("env")
    hsm.create_key(name, "AES", 256)
    changes: list[StateChange] = []
    env = Envelope(hsm, name, check_interval=INTERVAL, on_state_change=changes.append).start()
    _cycle(env, changes, lambda: hsm.set_enabled(name, False),
           lambda: hsm.set_enabled(name, True), "disabled")
    env.stop()
    hsm.close()


def test_an_unreachable_store_suspends_instead_of_serving(tmp_path: Path) -> None:
    from egressguard.keys.vault import VaultClient
    from tests.keys.conftest import UNREACHABLE_PG

    env = Envelope(VaultClient.connect(UNREACHABLE_PG, "cmk", MASTER, "gateway"), "audit")
    assert env.start().state == SUSPENDED and "unreachable" in env.reason
    with pytest.raises(SuspendedError):
        env.seal(os.urandom(8))
    env.stop()


def test_two_gateways_on_one_postgresql_store_read_each_others_blobs(pg_url: str) -> None:
    admin = KeyVault(pg_url, "fleet", master_key=MASTER)
    admin.grant("gw-a", "get,wrapKey,unwrapKey")
    admin.grant("gw-b", "get,wrapKey,unwrapKey")
    admin.create_key("audit", "RSA", 2048)
    from egressguard.keys.vault import VaultClient

    a = Envelope(VaultClient.connect(pg_url, "fleet", MASTER, "gw-a"), "audit").start()
    b = Envelope(VaultClient.connect(pg_url, "fleet", MASTER, "gw-b"), "audit").start()
    from_a, from_b = a.seal(b"from a"), b.seal(b"from b")
    assert b.open(from_a) == b"from a" and a.open(from_b) == b"from b"
    admin.revoke("gw-b", "unwrapKey")
    assert b.check() == SUSPENDED and a.check() == RUNNING
    for env in (a, b):
        env.stop()
        env.provider.engine.dispose()  # type: ignore[attr-defined]
    admin.close()
