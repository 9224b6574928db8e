"""kill -9 of a writer loses none of the events it acknowledged (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def test_writer_child_stuck_in_a_write_dies_with_a_killed_gateway(sqlite_url: str,
                                                                  audit_key: bytes) -> None:
    """The child cannot see its stdin close while it waits on the database: the kernel's
    parent-death signal (PR_SET_PDEATHSIG) ends it anyway."""
    from sqlalchemy import create_engine

    from tests.audit.test_hostile_records import _children, _gone

    writer = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("writer_proc.py")), sqlite_url,
         "process"], stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ})
    assert writer.stdout is not None
    blocker = create_engine(sqlite_url)
    conn = blocker.connect()
    try:
        writer.stdout.readline()                 # the writer child is up and writing
        children = _children(writer.pid)
        assert children
        conn.exec_driver_sql("BEGIN EXCLUSIVE")  # its next write waits (busy timeout 10 s)
        time.sleep(0.5)
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=10)
        deadline = time.monotonic() + 5          # well within the 10 s busy timeout
        while not all(map(_gone, children)):
            assert time.monotonic() < deadline, "writer child outlived its parent"
            time.sleep(0.05)
    finally:
        conn.rollback()
        conn.close()
        blocker.dispose()
