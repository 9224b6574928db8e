"""Deleting whole runs, the newest batches or the oldest ones retention did not prune is
detected by `logs verify` (issue 10 item 7); SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from egressguard.audit.log import AuditLog
from egressguard.audit.query import prune, verify
from egressguard.cli.main import app as cli
from tests.audit.conftest import event

pytestmark = pytest.mark.timeout(90)


def run(url: str, batches: int, tag: str, when: float | None = None) -> str:
    """One writer run of `batches` committed batches (3 events each); its writer id."""
    with AuditLog(url) as log:
        for b in range(batches):
            for i in range(3):
                log.emit(event(connection_id=f"{tag}-{b}-{i}",
                               time=when if when is not None else time.time()))
            log.flush()
        return log.writer_id


def seqs(engine: Engine, writer: str) -> list[int]:
    with engine.connect() as conn:
        return [int(s) for (s,) in conn.execute(text(
            "SELECT seq FROM audit_batches WHERE writer = :w ORDER BY seq"), {"w": writer})]


def delete_batches(engine: Engine, where: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DELETE FROM audit_events WHERE batch_id IN "
                          f"(SELECT id FROM audit_batches WHERE {where})"))
        conn.execute(text(f"DELETE FROM audit_batches WHERE {where}"))


def problems(url: str) -> list[str]:
    log = AuditLog(url, start=False)
    try:
        return verify(log.engine, log.sealer).problems or []
    finally:
        log.engine.dispose()


def test_each_run_continues_the_previous_runs_chain_and_deleting_a_run_is_detected(
        store_url: str, audit_key: bytes) -> None:
    first = run(store_url, 2, "one")
    second = run(store_url, 2, "two")
    third = run(store_url, 1, "three")
    assert first == second == third                   # one writer, anchored across runs
    log = AuditLog(store_url, start=False)
    try:
        assert seqs(log.engine, first) == [0, 1, 2, 3, 4]
        assert verify(log.engine, log.sealer).ok
        delete_batches(log.engine, "seq IN (2, 3)")   # the whole second run
    finally:
        log.engine.dispose()
    assert any("batches 2..3 missing" in p for p in problems(store_url))


def test_deleting_the_newest_batches_is_detected(store_url: str, audit_key: bytes) -> None:
    writer = run(store_url, 4, "a")
    log = AuditLog(store_url, start=False)
    try:
        delete_batches(log.engine, "seq >= 2")
        assert any("newest batches 2..3 missing" in p for p in problems(store_url))
        with log.engine.begin() as conn:              # ... and the head with them
            conn.execute(text("DELETE FROM audit_heads"))
        assert any(f"writer {writer}: head record missing" in p for p in problems(store_url))
    finally:
        log.engine.dispose()
    result = CliRunner().invoke(cli, ["logs", "verify", "--store", store_url])
    assert result.exit_code == 1 and "TAMPERED: writer" in result.output
    assert "NOT intact" in result.output


def test_rolling_the_head_back_with_the_newest_batches_shows_at_the_next_run(
        store_url: str, audit_key: bytes) -> None:
    run(store_url, 2, "a")
    log = AuditLog(store_url, start=False)
    try:
        with log.engine.connect() as conn:            # an attacker keeps the old head row
            old = conn.execute(text("SELECT * FROM audit_heads")).mappings().one()
        run(store_url, 2, "b")
        delete_batches(log.engine, "seq >= 2")
        with log.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_heads"))
            conn.execute(text("INSERT INTO audit_heads (writer, seq, mac, time, head_mac) "
                              "VALUES (:writer, :seq, :mac, :time, :head_mac)"), dict(old))
        assert problems(store_url) == []   # the store alone cannot tell (see `lineage`)
    finally:
        log.engine.dispose()
    run(store_url, 1, "c")                 # the writer's state file resumes past the gap
    assert any("batches 2..3 missing" in p for p in problems(store_url))


def test_deleting_the_oldest_batches_is_detected_unless_retention_pruned_them(
        store_url: str, audit_key: bytes) -> None:
    old = time.time() - 30 * 86400
    writer = run(store_url, 2, "old", when=old)
    run(store_url, 3, "new")
    log = AuditLog(store_url, start=False)
    try:
        assert prune(log.engine, log.sealer, max_age_s=86400) == 6     # retention: fine
        assert verify(log.engine, log.sealer).ok
        with log.engine.connect() as conn:
            pruned = conn.execute(text("SELECT through_seq, events FROM audit_prunes")).one()
        assert tuple(pruned) == (1, 6)
        delete_batches(log.engine, "seq = 2")       # not retention: the next oldest batch
        assert any(f"writer {writer}: oldest batches 2..2 missing" in p
                   for p in problems(store_url))
        with log.engine.begin() as conn:            # hiding that by removing the record
            conn.execute(text("DELETE FROM audit_prunes"))
        assert any("oldest batches 0..2 missing" in p for p in problems(store_url))
    finally:
        log.engine.dispose()


def test_writers_on_hosts_sharing_a_store_keep_separate_anchored_chains(
        store_url: str, audit_key: bytes, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    here = run(store_url, 1, "here")
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "other-host"))
    there = run(store_url, 2, "there")
    there_again = run(store_url, 1, "there")
    assert here != there == there_again
    log = AuditLog(store_url, start=False)
    try:
        assert seqs(log.engine, here) == [0] and seqs(log.engine, there) == [0, 1, 2]
        assert verify(log.engine, log.sealer).ok
        delete_batches(log.engine, f"writer = '{there}' AND seq = 2")
    finally:
        log.engine.dispose()
    assert [p for p in problems(store_url) if "newest" in p] == [
        f"writer {there}: newest batches 2..2 missing (the head says the chain reaches there)"]
