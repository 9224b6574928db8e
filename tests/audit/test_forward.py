"""`AuditLog.forward`: a gateway worker's batch, packed once in the worker, queued and
written as it came (no event decoded or encoded again in `serve`'s parent), in queue
order with the parent's own events, acknowledged by event count."""

from __future__ import annotations

import threading

import pytest

from egressguard.audit.log import AuditLog, Packed, pack_raws, raw_of
from egressguard.audit.query import Filter, query, verify
from tests.audit.conftest import event


def _packed(*ids: str) -> Packed:
    return Packed(len(ids), pack_raws([raw_of(event(connection_id=i)) for i in ids]))


def _open(writer: str, url: str, **options: int) -> AuditLog:
    if writer == "process":
        from egressguard.audit.remote import ProcessAuditLog

        return ProcessAuditLog(url, **options)
    return AuditLog(url, **options)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_forwarded_batches_are_stored_in_queue_order_with_emitted_events_and_verify(
        writer: str, sqlite_url: str, audit_key: bytes) -> None:
    log = _open(writer, sqlite_url)
    try:
        log.emit(event(connection_id="p1"))
        first = log.forward(_packed("w1", "w2", "w3"))
        log.emit(event(connection_id="p2"))
        second = log.forward(_packed("w4"))
        assert (first, second) == (4, 6)       # one seq per event, not per batch
        log.flush(timeout=30)
        assert log.acknowledged == 6
        records = query(log.engine, Filter(), sealer=log.sealer, newest_first=False)
        assert [r["connection_id"] for r in records] == ["p1", "w1", "w2", "w3", "p2", "w4"]
        assert records[1]["client_identity"] == "build-agent"   # sealed fields open
        assert verify(log.engine, log.sealer).ok
    finally:
        log.close()


def test_a_full_queue_drops_a_fire_and_forget_batch_but_never_a_durable_one(
        sqlite_url: str, audit_key: bytes) -> None:
    log = AuditLog(sqlite_url, max_pending=4, start=False)   # nothing written yet
    try:
        assert log.forward(_packed("a", "b", "c", "d")) == 4
        assert log.forward(_packed("e", "f")) == 0               # dropped: queue full
        assert log.dropped == 2
        assert log.forward(_packed("refused"), durable=True) == 5
        log._thread.start()
        log.flush(timeout=30)
        ids = [r["connection_id"] for r in query(log.engine, Filter(), sealer=None,
                                                   newest_first=False)]
        assert ids == ["a", "b", "c", "d", "refused"]
    finally:
        log.close()


def test_when_durable_calls_back_only_once_the_batch_is_committed(
        sqlite_url: str, audit_key: bytes) -> None:
    log = AuditLog(sqlite_url, start=False)
    try:
        done = threading.Event()
        log.when_durable(log.forward(_packed("refused"), durable=True), done.set)
        assert not done.wait(0.3)                 # the writer has not run: not durable
        assert query(log.engine, Filter(), sealer=None) == []
        log._thread.start()
        assert done.wait(30)
        assert [r["connection_id"] for r in query(log.engine, Filter(), sealer=None)] == [
            "refused"]
        already = threading.Event()
        log.when_durable(log.last_seq, already.set)   # committed already: at once
        assert already.is_set()
    finally:
        log.close()


def test_a_commit_of_forwarded_batches_is_bounded_by_events_not_by_batches(
        sqlite_url: str, audit_key: bytes) -> None:
    log = AuditLog(sqlite_url, batch_size=3, start=False)
    try:
        for n in range(4):
            log.forward(_packed(f"{n}a", f"{n}b"))
        log._thread.start()
        log.flush(timeout=30)
        with log.engine.connect() as conn:
            counts = [row[0] for row in conn.exec_driver_sql(
                "SELECT count FROM audit_batches ORDER BY seq")]
        assert counts == [4, 4]          # each commit stops once it holds >= 3 events
        assert verify(log.engine, log.sealer).ok
    finally:
        log.close()


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_an_event_is_queued_as_it_was_when_emitted_and_a_non_event_takes_no_seq(
        writer: str, sqlite_url: str, audit_key: bytes) -> None:
    log = _open(writer, sqlite_url)
    try:
        emitted = event(connection_id="then")
        log.emit(emitted)
        emitted.connection_id = "later"      # (events are not to be touched once emitted)
        log.emit(object())  # type: ignore[arg-type]
        assert log.last_seq == 1
        log.flush(timeout=30)
        records = query(log.engine, Filter(), sealer=log.sealer, newest_first=False)
        assert [r["connection_id"] for r in records] == ["then"]
    finally:
        log.close()
