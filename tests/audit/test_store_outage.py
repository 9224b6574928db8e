"""While PostgreSQL is unreachable, denials are durable in the local spool at once (also
across kill -9 of the gateway) and reach the store exactly once when it is back
(issue 10 item 8). The outage is real: the test database is renamed away (its sessions
terminated), so every connection attempt is refused until it is renamed back."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from egressguard.audit.crypto import CLEAR_FIELDS
from egressguard.audit.log import AuditLog
from egressguard.audit.query import verify
from egressguard.audit.spool import Spool
from tests.audit.conftest import event
from tests.audit.test_hostile_records import EGRESSGUARD, _children, _connect, _gone
from tests.conftest import PG_ADMIN

pytestmark = pytest.mark.timeout(120)
HOST = CLEAR_FIELDS.index("host")


class Outage:
    """Take the test database away and bring it back (the same data, untouched)."""

    def __init__(self, url: str) -> None:
        self.name = url.rsplit("/", 1)[1]
        self.down = False

    def start(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for _ in range(200):
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,))
                try:
                    conn.execute(f'ALTER DATABASE "{self.name}" RENAME TO "{self.name}_off"')
                    self.down = True
                    return
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.05)
        raise AssertionError("could not take the test database away")

    def end(self) -> None:
        if self.down:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{self.name}_off" RENAME TO "{self.name}"')
            self.down = False


@pytest.fixture
def outage(pg_url: str) -> Iterator[Outage]:
    made = Outage(pg_url)
    yield made
    made.end()


def stored_hosts(url: str) -> list[str]:
    log = AuditLog(url, start=False)
    try:
        with log.engine.connect() as conn:
            return [h for (h,) in conn.execute(text("SELECT host FROM audit_events"))]
    finally:
        log.engine.dispose()


def spooled_hosts(home: Path) -> list[str]:
    return [clear[HOST] for path in home.glob("audit/*/writer-*.spool")
            for batch in Spool(path).batches() for clear in batch[3]]


def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def _serve(url: str, tmp_path: Path, log_file: Path) -> tuple[subprocess.Popen[str], int]:
    policy = tmp_path / "closed.yaml"
    policy.write_text("restrict_outbound_network_access: Enabled\n")
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--no-api", "--policy", str(policy),
         "--store", url, "--audit-timeout", "20", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=log_file.open("a"), text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on 127.0.0.1:" in line, log_file.read_text()
    return proc, int(line.rsplit(":", 1)[1].split()[0])


def _deny(port: int, host: str, bound: float = 3.0) -> None:
    head, took = _connect(port, host)
    assert head.startswith(b"HTTP/1.1 403")
    assert took < bound, f"{host}: the refusal waited {took:.1f} s for the audit log"


def test_denials_during_an_outage_are_spooled_at_once_and_written_exactly_once(
        pg_url: str, audit_key: bytes, outage: Outage, tmp_path: Path) -> None:
    home = Path(os.environ["EGRESSGUARD_HOME"])
    logs = tmp_path / "gateway.log"
    proc, port = _serve(pg_url, tmp_path, logs)
    try:
        _deny(port, "before.example.com", bound=20)    # (the writer child starting up)
        outage.start()
        for i in range(3):
            _deny(port, f"spooled-{i}.example.com")
        # durable right now, in the spool (no flush: what is on disk)
        assert spooled_hosts(home) == [f"spooled-{i}.example.com" for i in range(3)]
        [spool] = home.glob("audit/*/writer-*.spool")
        assert stat.S_IMODE(spool.stat().st_mode) == 0o600
        children = _children(proc.pid)
        proc.kill()                                  # kill -9 of the gateway
        proc.wait(10)
        wait_for(lambda: all(map(_gone, children)))
        assert spooled_hosts(home) == [f"spooled-{i}.example.com" for i in range(3)]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    outage.end()

    proc, port = _serve(pg_url, tmp_path, logs)     # the next start writes the spool out
    try:
        wait_for(lambda: len(stored_hosts(pg_url)) == 4)
        assert spooled_hosts(home) == []
        outage.start()                               # a second outage, the gateway running
        for i in range(2):
            _deny(port, f"live-{i}.example.com")
        outage.end()
        wait_for(lambda: len(stored_hosts(pg_url)) == 6)   # drained on recovery
        _deny(port, "after.example.com")
        wait_for(lambda: len(stored_hosts(pg_url)) == 7)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    hosts = stored_hosts(pg_url)
    expected = {"before.example.com", "after.example.com",
                *(f"spooled-{i}.example.com" for i in range(3)),
                *(f"live-{i}.example.com" for i in range(2))}
    assert sorted(hosts) == sorted(expected)                # each exactly once
    log = AuditLog(pg_url, start=False)
    try:
        result = verify(log.engine, log.sealer)
    finally:
        log.engine.dispose()
    assert result.ok, result.problems
    output = logs.read_text()
    assert "Traceback" not in output
    assert output.count("store unreachable") == 2, output     # one line per state change
    assert output.count("store reachable again") == 2, output


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_degraded_is_true_while_records_go_to_the_spool(
        pg_url: str, audit_key: bytes, outage: Outage, writer: str) -> None:
    from egressguard.audit.remote import ProcessAuditLog

    log = ProcessAuditLog(pg_url) if writer == "process" else AuditLog(pg_url)
    try:
        await log.record(event(connection_id="up"))
        assert not log.degraded
        outage.start()
        started = time.monotonic()
        await log.record(event(connection_id="down"), timeout=5)
        assert time.monotonic() - started < 3.0 and log.degraded
        outage.end()
        for _ in range(100):
            if not log.degraded:
                break
            await asyncio.sleep(0.1)
        assert not log.degraded
        assert sorted(r for (r,) in _query(pg_url, "SELECT connection_id FROM audit_events")
                      ) == ["down", "up"]
    finally:
        log.close()


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    log = AuditLog(url, start=False)
    try:
        with log.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        log.engine.dispose()
