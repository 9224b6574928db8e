"""The audit log stores every field, seals the sensitive ones and detects tampering."""

from __future__ import annotations

import asyncio
import stat
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from egressguard.audit.crypto import load_or_create_key
from egressguard.audit.log import AuditLog, Retention
from egressguard.audit.query import Filter, QueryError, parse_since, prune, query, verify
from tests.audit.conftest import event

pytestmark = pytest.mark.timeout(60)


def test_every_field_round_trips(store_url: str, audit_key: bytes) -> None:
    opened = event(time=1700000000.25, resolved_address="203.0.113.7", protocol="tcp")
    closed = event(time=1700000001.5, phase="close", bytes_up=1234, bytes_down=98765,
                   duration_s=1.25, close_cause="revoked", path="/upload?sig=SECRET")
    with AuditLog(store_url) as log:
        log.emit(opened)
        log.emit(closed)
        log.flush()
        records = query(log.engine, Filter(), sealer=log.sealer, newest_first=False)
    assert [r["phase"] for r in records] == ["decision", "close"]
    for record, source in zip(records, (opened, closed), strict=True):
        expected = source.as_dict()
        assert {k: record[k] for k in expected} == expected
        assert record["outcome"] == "allow"
    assert records[1]["close_cause"] == "revoked"


def test_sensitive_fields_are_not_stored_in_clear(sqlite_url: str, audit_key: bytes,
                                                  tmp_path: Path) -> None:
    with AuditLog(sqlite_url) as log:
        log.emit(event(client_identity="alice@corp", path="/x?sig=TOPSECRET",
                       client_address="10.9.9.9", reason="because-reason"))
        log.flush()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))
    assert b"api.example.com" in raw            # filterable columns stay in clear
    for secret in (b"alice@corp", b"TOPSECRET", b"10.9.9.9", b"because-reason"):
        assert secret not in raw
    with AuditLog(sqlite_url, key=b"\1" * 32) as other:   # the wrong key opens nothing
        [record] = query(other.engine, Filter(), sealer=other.sealer)
    assert record["client_identity"] == "<tampered>"
    assert record["host"] == "api.example.com"


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EGRESSGUARD_AUDIT_KEY", raising=False)
    path = tmp_path / "audit.key"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == first and len(first) == 32


async def test_record_returns_only_once_another_connection_sees_it(
        store_url: str, audit_key: bytes) -> None:
    log = AuditLog(store_url)
    try:
        await log.record(event(verdict="deny", permitted=False, connection_id="denied-1"))
        reader = create_engine(log.engine.url)
        with reader.connect() as conn:
            found = conn.execute(text(
                "SELECT count(*) FROM audit_events WHERE connection_id = 'denied-1'")).scalar()
        reader.dispose()
        assert found == 1
    finally:
        log.close()


async def test_emit_does_not_block_the_event_loop(sqlite_url: str, audit_key: bytes) -> None:
    with AuditLog(sqlite_url) as log:
        started = time.perf_counter()
        for i in range(2000):
            log.emit(event(connection_id=str(i)))
        elapsed = time.perf_counter() - started
        await log.flush_for()
        assert len(query(log.engine, Filter(), sealer=None, limit=5000)) == 2000
    assert elapsed < 1.0  # queueing only (2000 commits with fsync would take far longer)


def test_database_locked_loses_nothing_and_full_queue_drops_only_unacknowledged(
        sqlite_url: str, audit_key: bytes) -> None:
    log = AuditLog(sqlite_url, max_pending=50)
    blocker = create_engine(log.engine.url)
    conn = blocker.connect()
    conn.exec_driver_sql("BEGIN EXCLUSIVE")   # the database is unavailable to the writer
    try:
        for i in range(80):
            log.emit(event(connection_id=str(i)))
        assert log.dropped == 30
        release = threading.Timer(0.5, conn.rollback)
        release.start()
        log.flush(timeout=30)
        release.join()
        ids = {r["connection_id"] for r in query(log.engine, Filter(), sealer=None, limit=500)}
        assert ids == {str(i) for i in range(50)}
    finally:
        conn.close()
        blocker.dispose()
        log.close()


def test_filters(store_url: str, audit_key: bytes) -> None:
    now = time.time()
    with AuditLog(store_url) as log:
        log.emit(event(time=now - 7200, host="old.example.com"))
        log.emit(event(time=now, host="acct.blob.core.windows.net"))
        log.emit(event(time=now, host="evil.net", verdict="deny", permitted=False))
        log.emit(event(time=now, host="new.evil.net", verdict="deny", permitted=True,
                       cluster="staging"))
        log.emit(event(time=now, host="a_b.example.com"))
        log.flush()

        def hosts(**kw: object) -> list[str]:
            found = query(log.engine, Filter(**kw), sealer=log.sealer)  # type: ignore[arg-type]
            return sorted(r["host"] for r in found)

        assert hosts(since=now - 3600) == ["a_b.example.com", "acct.blob.core.windows.net",
                                           "evil.net", "new.evil.net"]
        assert hosts(outcome="deny") == ["evil.net"]
        assert hosts(outcome="would-deny") == ["new.evil.net"]
        assert hosts(dest="*.blob.core.windows.net") == ["acct.blob.core.windows.net"]
        assert hosts(dest="*.EVIL.net") == ["new.evil.net"]
        assert hosts(dest="a_b.example.com") == ["a_b.example.com"]
        assert hosts(dest="a_b.*") == ["a_b.example.com"]     # '_' is literal, not LIKE's
        assert hosts(dest="%") == []                          # '%' is literal too
        assert hosts(cluster="staging") == ["new.evil.net"]
        newest = query(log.engine, Filter(), sealer=None, limit=2)
        older = query(log.engine, Filter(), sealer=None, limit=10, before=newest[-1]["id"])
        assert len(newest) == 2 and len(older) == 3
        assert newest[-1]["id"] > older[0]["id"]


def test_bad_filters_are_clear_errors() -> None:
    with pytest.raises(QueryError, match="invalid verdict"):
        Filter(outcome="maybe")
    with pytest.raises(QueryError, match="invalid time"):
        parse_since("yesterday-ish")
    assert parse_since("1h30m", now=10_000.0) == 10_000.0 - 5400
    assert parse_since("2024-01-01T00:00:00Z") == 1704067200.0


def test_edited_record_is_detected(store_url: str, audit_key: bytes) -> None:
    with AuditLog(store_url) as log:
        log.emit(event(verdict="deny", permitted=False, host="evil.net"))
        log.flush()
        assert verify(log.engine, log.sealer).ok
        with log.engine.begin() as conn:   # an attacker turns the denial into an allow
            conn.execute(text("UPDATE audit_events SET verdict = 'allow'"))
        result = verify(log.engine, log.sealer)
        [record] = query(log.engine, Filter(), sealer=log.sealer)
    assert not result.ok and "1 event altered (do not authenticate)" in (result.problems or [""])[0]
    assert record["reason"] == "<tampered>"


def test_removed_or_inserted_records_are_detected(sqlite_url: str, audit_key: bytes) -> None:
    with AuditLog(sqlite_url) as log:
        for batch in range(3):
            for i in range(3):
                log.emit(event(connection_id=f"{batch}-{i}"))
            log.flush()
        assert verify(log.engine, log.sealer).ok
        with log.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_events WHERE connection_id = '1-1'"))
        problems = verify(log.engine, log.sealer).problems or []
        assert any("removed" in p for p in problems)
        with log.engine.begin() as conn:
            batch_id = conn.execute(text(
                "SELECT batch_id FROM audit_events WHERE connection_id = '1-0'")).scalar()
            conn.execute(text(f"DELETE FROM audit_events WHERE batch_id = {batch_id}"))
            conn.execute(text(f"DELETE FROM audit_batches WHERE id = {batch_id}"))
        problems = verify(log.engine, log.sealer).problems or []
        assert any("missing" in p for p in problems)


def test_retention_by_age_and_rows_keeps_the_chain_verifiable(
        store_url: str, audit_key: bytes) -> None:
    now = time.time()
    with AuditLog(store_url) as log:
        for age in (40, 30, 20, 10):            # four batches, 5 events each
            for i in range(5):
                log.emit(event(time=now - age * 86400, connection_id=f"{age}-{i}"))
            log.flush()
        assert prune(log.engine, log.sealer, max_age_s=25 * 86400, now=now) == 10
        assert prune(log.engine, log.sealer, max_rows=7) == 0       # keeps whole batches: 10 > 7
        assert prune(log.engine, log.sealer, max_rows=5) == 5
        left = {r["connection_id"] for r in query(log.engine, Filter(), sealer=None)}
        assert left == {f"10-{i}" for i in range(5)}
        assert verify(log.engine, log.sealer).ok


def test_writer_prunes_automatically(sqlite_url: str, audit_key: bytes) -> None:
    old = time.time() - 3 * 86400
    with AuditLog(sqlite_url, retention=Retention(max_age_s=86400, every_s=0)) as log:
        log.emit(event(time=old, connection_id="old"))
        log.flush()
        log.emit(event(connection_id="new"))    # the next batch's writer pass prunes
        log.flush()
        log.emit(event(connection_id="newer"))
        log.flush()
        left = {r["connection_id"] for r in query(log.engine, Filter(), sealer=None)}
    assert left == {"new", "newer"}


def test_shares_the_database_with_the_control_plane(sqlite_url: str,
                                                    audit_key: bytes) -> None:
    from egressguard.store import Store

    with AuditLog(sqlite_url) as log, Store(sqlite_url) as store:
        log.emit(event())
        log.flush()
        assert store.current("default").number >= 1
        with log.engine.connect() as conn:
            tables = {row[0] for row in conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'table'"))}
    assert {"alembic_version", "alembic_version_audit", "audit_events"} <= tables
    with AuditLog(sqlite_url) as again:     # re-opening migrates nothing twice
        assert len(query(again.engine, Filter(), sealer=None)) == 1


async def test_concurrent_record_calls_share_commits(sqlite_url: str,
                                                     audit_key: bytes) -> None:
    with AuditLog(sqlite_url) as log:
        await asyncio.gather(*(log.record(event(connection_id=str(i))) for i in range(200)))
        with log.engine.connect() as conn:
            batches = conn.execute(text("SELECT count(*) FROM audit_batches")).scalar()
        assert len(query(log.engine, Filter(), sealer=None, limit=500)) == 200
    assert batches is not None and batches < 200


def test_unusual_fields_round_trip_and_a_malformed_event_does_not_wedge_the_writer(
        sqlite_url: str, audit_key: bytes) -> None:
    odd = event(path="/a\0b", reason='quote " and \\ and ü', client_identity="")
    with AuditLog(sqlite_url) as log:
        log.emit(odd)
        log.emit(event(port="not-a-port", connection_id="bad"))  # type: ignore[arg-type]
        log.emit(event(connection_id="after"))
        log.flush(timeout=10)
        records = query(log.engine, Filter(), sealer=log.sealer, newest_first=False)
        assert verify(log.engine, log.sealer).ok
    assert [r["connection_id"] for r in records] == ["c1", "after"]
    assert (records[0]["path"], records[0]["reason"]) == ("/a\0b", 'quote " and \\ and ü')


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_audit_sink_composition_writes_events_and_exfil_warnings(
        sqlite_url: str, audit_key: bytes, writer: str) -> None:
    from egressguard.audit.compose import audit_sink
    from egressguard.audit.events import emit_durably

    sink, log = audit_sink(sqlite_url, exfil_threshold=1000, exfil_window_s=60,
                           writer=writer)  # type: ignore[arg-type]
    try:
        sink.emit(event(phase="close", bytes_up=600, connection_id="a"))
        sink.emit(event(phase="close", bytes_up=600, connection_id="b"))
        await emit_durably(sink, event(verdict="deny", permitted=False, connection_id="d"))
        await log.flush_for()
        kinds = [(r["kind"], r["connection_id"]) for r in
                 query(log.engine, Filter(), sealer=log.sealer, newest_first=False)]
    finally:
        log.close()
    assert kinds == [("connect", "a"), ("connect", "b"), ("warning", "b"), ("connect", "d")]


def test_exfiltration_monitor_counts_the_bytes_of_short_exchange_records() -> None:
    from egressguard.audit.sinks import ExfilMonitor

    class Warnings:
        def __init__(self) -> None:
            self.got: list[object] = []

        def emit(self, e: object) -> None:
            self.got.append(e)

    warned = Warnings()
    monitor = ExfilMonitor(1000, 60, warn_to=warned)  # type: ignore[arg-type]
    monitor.emit(event(phase="decision", bytes_up=5000, connection_id="d"))  # no bytes yet
    assert warned.got == []
    monitor.emit(event(phase="exchange", bytes_up=600, connection_id="a"))
    monitor.emit(event(phase="exchange", bytes_up=600, connection_id="b"))
    assert len(warned.got) == 1
