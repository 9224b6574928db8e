"""The audit log sealed under a customer-managed key (issue 13): every batch names the key
version that wrapped its data key; after rotation old and new records both read and
verify; a reader whose key is unavailable is told "cannot decrypt: key K version V
unavailable", never "tampered"; the spool holds sealed batches with their header; two
gateways with different local audit keys on one PostgreSQL store read and verify each
other's records through the same vault key."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from egressguard.audit.crypto import EnvelopeSealer, Sealer
from egressguard.audit.log import AuditLog
from egressguard.audit.query import Filter, query, verify
from egressguard.audit.schema import batches, events
from egressguard.keys.envelope import Envelope
from egressguard.keys.provider import WrappedKey
from egressguard.keys.vault import KeyVault
from tests.audit.conftest import event
from tests.keys.conftest import MASTER, audit_vault, unique

pytestmark = pytest.mark.timeout(120)
SECRET_PATH = "/blob?sig=SECRET-SAS-TOKEN"


@pytest.fixture
def vault(store_url: str) -> Iterator[KeyVault]:
    v = audit_vault(store_url, unique("cmk"))
    yield v
    v.close()


def envelope_for(vault: KeyVault, identity: str = "gateway") -> Envelope:
    env = Envelope(vault.client(identity), "audit", check_interval=60)
    env.check()
    return env


def write(log: AuditLog, n: int, **changes: object) -> None:
    for i in range(n):
        log.emit(event(path=SECRET_PATH, connection_id=f"c{i}", **changes))
    log.flush()


def headers(url_engine: object) -> list[bytes | None]:
    with url_engine.connect() as conn:  # type: ignore[attr-defined]
        return [None if h is None else bytes(h)
                for h in conn.execute(select(batches.c.key_header).order_by(batches.c.id))
                .scalars()]


def test_after_rotation_old_and_new_records_both_read_and_verify(
        store_url: str, vault: KeyVault, audit_key: bytes) -> None:
    env = envelope_for(vault)
    with AuditLog(store_url, envelope=env) as log:
        write(log, 3, host="old.example.com")
        first = vault.get_key("audit").latest
        newer = vault.rotate_key("audit").latest
        env.check()  # an unset keyVersion follows the latest on the next check
        write(log, 2, host="new.example.com")
        versions = [WrappedKey.from_bytes(h).version for h in headers(log.engine) if h]
        assert versions[0] == first and versions[-1] == newer
        assert len(headers(log.engine)) == len(versions)  # every batch has a header
        with log.engine.connect() as conn:
            stored = b"".join(conn.execute(select(events.c.payload)).scalars())
        assert b"SECRET-SAS-TOKEN" not in stored
        records = query(log.engine, Filter(), sealer=log.reader, newest_first=False)
        assert [r["host"] for r in records] == ["old.example.com"] * 3 + \
            ["new.example.com"] * 2
        assert {r["path"] for r in records} == {SECRET_PATH}
        result = verify(log.engine, log.reader)
        assert result.ok and result.complete, (result.problems, result.unreadable)
        assert result.events == 5
    env.stop()


def test_wrong_or_unavailable_key_is_cannot_decrypt_never_tampered(
        store_url: str, vault: KeyVault, audit_key: bytes) -> None:
    env = envelope_for(vault)
    with AuditLog(store_url, envelope=env) as log:
        write(log, 2)
        version = vault.get_key("audit").latest
        # A reader whose identity may not unwrap, and one with no customer key at all.
        vault.grant("auditor", "get,wrapKey")
        for reader in (EnvelopeSealer(envelope_for(vault, "auditor"), log.sealer),
                       EnvelopeSealer(None, Sealer(os.urandom(32)))):
            result = verify(log.engine, reader)
            assert result.ok, result.problems            # not tampered
            assert not result.complete
            kid = f"vault://{vault.name}/keys/audit/{version}"
            assert any(f"cannot decrypt: key {kid} unavailable" in u
                       for u in result.unreadable or []), result.unreadable
            [first, *_] = query(log.engine, Filter(), sealer=reader)
            assert first["path"] == "<cannot decrypt>"
            assert first["unreadable"].startswith(f"cannot decrypt: key {kid}")
        # The key version disabled in the vault: the writer's own reader cannot decrypt.
        vault.set_enabled("audit", False)
        env.check()
        result = verify(log.engine, log.reader)
        assert result.ok and not result.complete
        assert "cannot decrypt" in (result.unreadable or [""])[0]
        vault.set_enabled("audit", True)
        env.check()
        # An edited record with the right key: tampered, not "cannot decrypt".
        with log.engine.begin() as conn:
            conn.execute(update(events).where(events.c.id == first["id"])
                         .values(host="evil.example.com"))
        result = verify(log.engine, log.reader)
        assert not result.ok and result.complete
        assert any("altered" in p for p in result.problems or [])
        [edited] = [r for r in query(log.engine, Filter(), sealer=log.reader)
                    if r["id"] == first["id"]]
        assert edited["path"] == "<tampered>"
    env.stop()


def test_records_written_before_the_key_still_open_under_the_local_key(
        store_url: str, vault: KeyVault, audit_key: bytes) -> None:
    with AuditLog(store_url) as log:
        write(log, 2, host="before.example.com")
    env = envelope_for(vault)
    with AuditLog(store_url, envelope=env) as log:
        write(log, 2, host="after.example.com")
        assert [h is None for h in headers(log.engine)] == [True, False]
        result = verify(log.engine, log.reader)
        assert result.ok and result.complete, (result.problems, result.unreadable)
        assert {r["path"] for r in query(log.engine, Filter(), sealer=log.reader)} == \
            {SECRET_PATH}
    env.stop()


def test_the_spool_holds_batches_sealed_under_the_data_key_with_their_header(
        tmp_path: Path, audit_key: bytes) -> None:
    # The vault lives in a store that stays up; the audit store is unreachable.
    vault = audit_vault(f"sqlite:///{tmp_path / 'vault.db'}", "cmk")
    env = envelope_for(vault)
    log = AuditLog("postgresql://postgres@127.0.0.1:1/none", envelope=env)
    try:
        write(log, 3)
        assert log.degraded
        assert log._spool is not None
        spooled = log._spool.batches()
        raw = log._spool.path.read_bytes()
        assert b"SECRET-SAS-TOKEN" not in raw
        assert all(b[5] is not None for b in spooled)
        assert WrappedKey.from_bytes(spooled[0][5]).key == "audit"
        reopened = [r for b in spooled for r in log._reopen(b)]
        assert {r[-2] for r in reopened} == {SECRET_PATH}   # the path field
    finally:
        log.close(timeout=5)
        env.stop()
        vault.close()


def test_two_gateways_on_one_postgresql_store_read_each_others_records(
        pg_url: str, audit_key: bytes, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    vault = audit_vault(pg_url, "cmk")
    env_a, env_b = envelope_for(vault), envelope_for(vault)
    # Different data homes and different local audit keys: only the vault key is shared.
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "a"))
    log_a = AuditLog(pg_url, key=os.urandom(32), envelope=env_a)
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "b"))
    log_b = AuditLog(pg_url, key=os.urandom(32), envelope=env_b)
    try:
        write(log_a, 2, host="from-a.example.com")
        write(log_b, 2, host="from-b.example.com")
        for reader in (log_a, log_b):
            records = query(reader.engine, Filter(), sealer=reader.reader)
            assert {r["host"] for r in records} == {"from-a.example.com",
                                                    "from-b.example.com"}
            assert {r["path"] for r in records} == {SECRET_PATH}
            result = verify(reader.engine, reader.reader)
            assert result.ok and result.complete, (result.problems, result.unreadable)
        assert log_a.writer_id != log_b.writer_id
    finally:
        log_a.close()
        log_b.close()
        env_a.stop()
        env_b.stop()
        vault.close()


def test_verify_opens_each_batch_with_the_key_its_header_names_whichever_cluster(
        store_url: str, vault: KeyVault, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One store, two clusters, each under its own key: `logs verify` (configured for
    `default`) checks `other`'s batches too, through the vault as `other`'s identity;
    when `other`'s key is disabled it says that it is `other`'s key that is missing."""
    import base64

    from typer.testing import CliRunner

    from egressguard.cli.main import app as cli
    from egressguard.keys import clusterkeys
    from egressguard.keys.runtime import ClusterKey
    from egressguard.store import Store

    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    theirs = KeyVault(store_url, unique("cmk"), master_key=MASTER)  # only `other` may use
    theirs.create_key("audit-other", "RSA", 2048)
    theirs.grant("cluster-other", "get,wrapKey,unwrapKey")
    store = Store(store_url)
    store.create_cluster("other", store.current("default").policy, "t")
    for cluster, where, key, identity in (("default", vault, "audit", "gateway"),
                                          ("other", theirs, "audit-other", "")):
        clusterkeys.put(store.engine, store_url, MASTER, cluster,
                        {"keyName": key, "keyVaultUri": f"vault://{where.name}",
                         "userIdentity": identity}, "t")
        ck = ClusterKey.open(store_url, cluster, start=False)
        assert ck is not None
        ck.envelope.check()
        with AuditLog(store_url, envelope=ck.envelope) as log:
            write(log, 3, cluster=cluster)
        ck.close()
    store.close()
    result = CliRunner().invoke(cli, ["logs", "verify", "--store", store_url])
    assert result.exit_code == 0, result.output
    assert "CANNOT DECRYPT" not in result.output and "intact" in result.output
    theirs.set_enabled("audit-other", False)
    result = CliRunner().invoke(cli, ["logs", "verify", "--store", store_url])
    theirs.close()
    assert result.exit_code == 3, result.output
    assert "TAMPERED" not in result.output
    assert f"CANNOT DECRYPT: cannot decrypt: key vault://{theirs.name}/keys/audit-other/" \
        in result.output
    assert "cluster other's key" in result.output and "disabled" in result.output
