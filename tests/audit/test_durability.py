"""kill -9 of a writer loses none of the events it acknowledged (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from egressguard.audit.crypto import Sealer, load_or_create_key
from egressguard.audit.db import make_engine
from egressguard.audit.query import verify

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("mode", "ack_target"),
                         [("thread", 150), ("thread", 600), ("process", 300)])
def test_kill_9_loses_no_acknowledged_event(store_url: str, audit_key: bytes,
                                            mode: str, ack_target: int) -> None:
    writer = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("writer_proc.py")), store_url, mode],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ})
    assert writer.stdout is not None
    acked = -1
    try:
        for line in writer.stdout:
            acked = int(line.split()[1])
            if acked >= ack_target:
                break
        writer.send_signal(signal.SIGKILL)    # mid-stream: it keeps emitting until killed
    finally:
        rest, _ = writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    for line in rest.splitlines():            # acknowledgements printed before it died
        acked = max(acked, int(line.split()[1]))
    assert acked >= ack_target

    engine = make_engine(store_url)
    with engine.connect() as conn:
        stored = {int(v) for (v,) in conn.execute(text(
            "SELECT connection_id FROM audit_events"))}
    missing = set(range(acked + 1)) - stored
    assert not missing, f"acknowledged events lost: {sorted(missing)[:10]}"
    # What reached the disk is whole batches only, still authenticated and chained.
    result = verify(engine, Sealer(load_or_create_key()))
    engine.dispose()
    assert result.ok, result.problems
    if mode == "thread":   # (the process writer's child may finish in-flight frames)
        assert stored == set(range(len(stored)))  # a prefix: written in order


async def test_process_writer_survives_its_child_being_killed(sqlite_url: str,
                                                              audit_key: bytes) -> None:
    from egressguard.audit.remote import ProcessAuditLog
    from tests.audit.conftest import event

    log = ProcessAuditLog(sqlite_url)
    try:
        for i in range(50):
            log.emit(event(connection_id=str(i)))
        await log.flush_for()
        log._child.kill()                       # the writer process dies mid-stream
        for i in range(50, 100):
            log.emit(event(connection_id=str(i)))
        await log.record(event(connection_id="100"))
        with log.engine.connect() as conn:
            stored = {int(v) for (v,) in conn.execute(text(
                "SELECT connection_id FROM audit_events"))}
        assert stored == set(range(101))
    finally:
        log.close()
