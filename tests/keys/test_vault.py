"""The built-in vault's own semantics: soft delete, purge protection, recover, access
policies, sealed key material and the master key (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from egressguard.keys.master import MASTER_ENV, MasterKeyError, load_master_key
from egressguard.keys.provider import (
    AccessDenied,
    KeyConflict,
    KeyDeleted,
    KeyNotFound,
    KeyRequestError,
    PurgeRefused,
)
from egressguard.keys.vault import KeyVault
from egressguard.store import normalize_url
from tests.keys.conftest import MASTER

pytestmark = pytest.mark.timeout(60)


def test_purge_is_refused_while_purge_protection_is_on(store_url: str) -> None:
    vault = KeyVault(store_url, "protected", master_key=MASTER)  # protection on by default
    assert vault.properties().purge_protection and vault.properties().soft_delete
    vault.create_key("cmk", "AES", 256)
    with pytest.raises(KeyRequestError, match="not deleted"):
        vault.purge_key("cmk")
    vault.delete_key("cmk")
    with pytest.raises(PurgeRefused, match="purge protection"):
        vault.purge_key("cmk")
    assert [k.name for k in vault.list_keys(deleted=True)] == ["cmk"]
    # Only the end of the retention period removes it.
    assert vault.purge_expired(datetime.now(UTC) + timedelta(days=89)) == []
    assert vault.purge_expired(datetime.now(UTC) + timedelta(days=91)) == ["cmk"]
    with pytest.raises(KeyNotFound):
        vault.get_key("cmk", include_deleted=True)
    vault.close()


def test_soft_deleted_key_holds_its_name_and_recovers_with_its_versions(
        sqlite_url: str) -> None:
    vault = KeyVault(sqlite_url, "soft", master_key=MASTER, purge_protection=False,
                     retention_days=7)
    vault.grant("gw", "get,wrapKey,unwrapKey")
    info = vault.rotate_key(vault.create_key("cmk", "AES", 256).name)
    wrapped = vault.client("gw").wrap_key("cmk", os.urandom(32))
    vault.delete_key("cmk")
    deleted = vault.get_key("cmk", include_deleted=True)
    assert "scheduledPurgeDate" in deleted.attributes and vault.list_keys() == []
    with pytest.raises(KeyConflict, match="soft-deleted"):
        vault.create_key("cmk", "AES", 256)
    with pytest.raises(KeyDeleted):
        vault.rotate_key("cmk")
    assert vault.recover_key("cmk").versions == info.versions
    assert len(vault.client("gw").unwrap_key(wrapped)) == 32
    vault.delete_key("cmk")
    vault.purge_key("cmk")  # no purge protection here
    vault.create_key("cmk", "AES", 256)  # the name is free again
    vault.close()


def test_a_vault_without_soft_delete_purges_on_delete(sqlite_url: str) -> None:
    vault = KeyVault(sqlite_url, "plain", master_key=MASTER, soft_delete=False,
                     purge_protection=False)
    vault.create_key("cmk", "AES", 256)
    vault.delete_key("cmk")
    with pytest.raises(KeyNotFound):
        vault.recover_key("cmk")
    with pytest.raises(KeyRequestError, match="7-90"):
        KeyVault(sqlite_url, "bad", master_key=MASTER, retention_days=3)
    vault.close()


def test_access_policies_grant_each_permission_separately(store_url: str) -> None:
    vault = KeyVault(store_url, "acl", master_key=MASTER)
    vault.create_key("cmk", "AES", 256)
    vault.grant("writer", "get,wrapKey")
    vault.grant("reader", ["unwrapKey"])
    writer, reader = vault.client("writer"), vault.client("reader")
    wrapped = writer.wrap_key("cmk", os.urandom(32))
    with pytest.raises(AccessDenied, match="lacks unwrapKey"):
        writer.unwrap_key(wrapped)
    with pytest.raises(AccessDenied, match="lacks get"):
        reader.get_key("cmk")
    with pytest.raises(AccessDenied, match="lacks wrapKey"):
        reader.wrap_key("cmk", os.urandom(32))
    assert len(reader.unwrap_key(wrapped)) == 32
    assert vault.revoke("writer", "wrapKey") == frozenset({"get"})
    with pytest.raises(AccessDenied):
        writer.wrap_key("cmk", os.urandom(32))
    assert vault.access_policies() == {"reader": frozenset({"unwrapKey"}),
                                       "writer": frozenset({"get"})}
    # A denied identity learns nothing about which keys exist.
    with pytest.raises(AccessDenied):
        vault.client("nobody").get_key("no-such-key")
    with pytest.raises(KeyRequestError, match="unknown permission"):
        vault.grant("writer", "get,purge")
    vault.close()


def test_key_material_is_sealed_in_the_store_and_useless_without_the_master_key(
        store_url: str) -> None:
    vault = KeyVault(store_url, "sealed", master_key=MASTER)
    vault.grant("gw", "get,wrapKey,unwrapKey")
    vault.create_key("cmk", "AES", 256)
    data_key = os.urandom(32)
    wrapped = vault.client("gw").wrap_key("cmk", data_key)
    engine = create_engine(normalize_url(store_url))
    with engine.connect() as conn:
        sealed = conn.execute(text("SELECT sealed FROM keyvault_key_versions")).scalar_one()
    engine.dispose()
    from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
    assert len(sealed) == 12 + 32 + 16  # nonce, AES key, tag: not the raw key
    with pytest.raises(InvalidUnwrap):
        aes_key_unwrap(bytes(sealed[12:44]), wrapped.ciphertext)
    other = KeyVault(store_url, "sealed", master_key=os.urandom(32))
    other.grant("gw", "unwrapKey")
    with pytest.raises(AccessDenied, match="master key"):
        other.client("gw").unwrap_key(wrapped)
    other.close()
    vault.close()


def test_master_key_file_is_created_0600_and_a_readable_one_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_ENV, raising=False)
    path = tmp_path / "home" / "master.key"
    key = load_master_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_master_key(path) == key
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="readable by others"):
        load_master_key(path)
    with pytest.raises(MasterKeyError, match="no master key"):
        load_master_key(tmp_path / "absent.key", create=False)
    monkeypatch.setenv(MASTER_ENV, base64.b64encode(MASTER).decode())
    assert load_master_key(path) == MASTER
    monkeypatch.setenv(MASTER_ENV, "not base64!")
    with pytest.raises(MasterKeyError, match="not base64"):
        load_master_key(path)
    monkeypatch.setenv(MASTER_ENV, base64.b64encode(b"short").decode())
    with pytest.raises(MasterKeyError, match="32 bytes"):
        load_master_key(path)
