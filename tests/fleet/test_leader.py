"""Singleton jobs run once per fleet: two real processes campaign on one PostgreSQL
database; only the leader runs the job; kill -9 the leader and the other takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import func, select

from egressguard.audit.db import make_engine
from egressguard.audit.events import DecisionEvent
from egressguard.audit.log import AuditLog, Retention
from egressguard.audit.schema import events
from egressguard.fleet import Job, Leader
from egressguard.fleet.jobs import retention_job

# A member that records each run of its job in a table: (pid, time).
MEMBER = """
import os, sys, time, psycopg
from egressguard.fleet import Job, Leader
url = sys.argv[1]
def tick():
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO ticks VALUES (%s, %s)", (os.getpid(), time.time()))
Leader(url, [Job("tick", 0.1, tick)], interval=0.2).start()
print("ready", flush=True)
time.sleep(600)
"""


def _ticks(url: str, since: float = 0.0) -> dict[int, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT pid, count(*) FROM ticks WHERE t > %s GROUP BY pid",
                            (since,)).fetchall()
    return {int(pid): int(n) for pid, n in rows}


@pytest.fixture
def members(pg_url: str) -> Iterator[list[subprocess.Popen[str]]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ticks (pid integer, t double precision)")
    procs = [subprocess.Popen([sys.executable, "-c", MEMBER, pg_url],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_only_one_member_runs_the_job_and_the_other_takes_over_after_kill_9(
        pg_url: str, members: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 15
    while not _ticks(pg_url) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)
    ran = _ticks(pg_url)
    assert len(ran) == 1, f"more than one member ran the singleton job: {ran}"
    (leader_pid,) = ran
    follower = next(p for p in members if p.pid != leader_pid)
    os.kill(leader_pid, signal.SIGKILL)
    killed_at = time.time()
    deadline = time.monotonic() + 10
    while follower.pid not in _ticks(pg_url, killed_at) and time.monotonic() < deadline:
        time.sleep(0.1)
    took = time.time() - killed_at
    assert follower.pid in _ticks(pg_url, killed_at), "no takeover within 10 s"
    assert took < 5, f"takeover took {took:.1f} s"
    time.sleep(0.5)
    assert set(_ticks(pg_url, killed_at + 0.1)) == {follower.pid}


def test_a_member_that_loses_its_session_steps_down(pg_url: str) -> None:
    ran: list[float] = []
    leader = Leader(pg_url, [Job("tick", 0.05, lambda: ran.append(1))],
                    interval=0.1).start()
    try:
        assert leader.wait_leading(10)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'egressguard-leader'")
        deadline = time.monotonic() + 5
        while leader.leading and time.monotonic() < deadline:
            time.sleep(0.02)
        # It stepped down or re-took the lock (nobody else campaigns): either way the
        # session it now holds is a live one that owns the lock.
        assert leader.wait_leading(10)
        with psycopg.connect(pg_url) as admin:
            held = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = "
                                 "'advisory' AND granted").fetchone()
        assert held is not None and held[0] == 1
    finally:
        leader.stop()


def test_sqlite_host_is_the_leader(sqlite_url: str) -> None:
    leader = Leader(sqlite_url, interval=0.05).start()
    try:
        assert leader.wait_leading(5)
    finally:
        leader.stop()
    assert not leader.leading


def _event(i: int, at: float) -> DecisionEvent:
    return DecisionEvent(time=at, cluster="default", kind="http", host=f"h{i}.example",
                         port=80, verdict="deny", permitted=False, layer="application",
                         rule="", reason="no rule allows it", connection_id=str(i))


def test_retention_job_prunes_the_audit_log_once_for_the_fleet(store_url: str) -> None:
    with AuditLog(store_url) as audit:
        for i in range(30):
            audit.emit(_event(i, time.time() - 7200))
        audit.flush()
    job = retention_job(store_url, Retention(max_age_s=3600))
    leader = Leader(store_url, [job], interval=0.05).start()
    try:
        engine = make_engine(store_url)
        deadline = time.monotonic() + 10
        left = 30
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                left = int(conn.execute(select(func.count()).select_from(events)).scalar()
                           or 0)
            if left == 0:
                break
            time.sleep(0.1)
        engine.dispose()
        assert left == 0
    finally:
        leader.stop()
