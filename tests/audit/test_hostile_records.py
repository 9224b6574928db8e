"""One hostile request (or a careless operator) cannot stop the audit log: every field is
bounded, a record the database refuses is stored in safe form, and the writer child dies
with the gateway (issue 10 item 1). SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from egressguard.audit.bounds import MARK, bounded
from egressguard.audit.log import AuditLog
from egressguard.audit.query import Filter, query, verify
from tests.audit.conftest import event

pytestmark = pytest.mark.timeout(90)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
LONG_HOST = ".".join(["a" * 59] * 5)           # 299 characters: longer than the column
CLOSED = "restrict_outbound_network_access: Enabled\n"


def _serve(store_url: str, tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    policy = tmp_path / "closed.yaml"
    policy.write_text(CLOSED)
    proc = subprocess.Popen(
        # --workers 1: the gateway and its audit writer child, no worker processes between.
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--no-api", "--policy", str(policy),
         "--workers", "1", "--store", store_url, "--audit-timeout", "20", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on 127.0.0.1:" in line, proc.stderr.read() if proc.stderr else ""
    return proc, int(line.rsplit(":", 1)[1].split()[0])


def _connect(port: int, host: str) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = sock.recv(100)
    return head, time.monotonic() - started


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_connect_with_a_300_character_host_does_not_stop_auditing(
        store_url: str, audit_key: bytes, tmp_path: Path) -> None:
    proc, port = _serve(store_url, tmp_path)
    try:
        head, _ = _connect(port, LONG_HOST)
        assert head.startswith(b"HTTP/1.1 403")
        for i in range(5):      # later denials are recorded promptly (not the 20 s timeout)
            head, took = _connect(port, f"after-{i}.example.com")
            assert head.startswith(b"HTTP/1.1 403") and took < 5.0, took
        log = AuditLog(store_url, start=False)
        try:
            hosts = [r["host"] for r in query(log.engine, Filter(), sealer=log.sealer,
                                              newest_first=False)]
            assert hosts[1:] == [f"after-{i}.example.com" for i in range(5)]
            assert hosts[0] == bounded(LONG_HOST, 260) and MARK in hosts[0]
            assert hosts[0].startswith(LONG_HOST[:200]) and len(hosts[0]) == 260
            assert verify(log.engine, log.sealer).ok
        finally:
            log.engine.dispose()
        # The gateway goes, its audit writer child with it: kill -9 (PostgreSQL), and a
        # SIGTERM shutdown that no longer hangs on a refused batch (SQLite).
        children = _children(proc.pid)
        assert children, "the process audit writer should be a child of the gateway"
        if store_url.startswith("postgresql"):
            proc.kill()
            proc.wait(10)
        else:
            started = time.monotonic()
            proc.terminate()
            assert proc.wait(15) == 0 and time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while not all(map(_gone, children)):
            assert time.monotonic() < deadline, "audit writer child outlived the gateway"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_records_the_database_refuses_are_stored_in_safe_form_without_blocking_others(
        store_url: str, audit_key: bytes, writer: str) -> None:
    from egressguard.audit.remote import ProcessAuditLog

    hostile = [
        event(host="nul\0host.example", connection_id="nul"),            # PostgreSQL: no NUL
        event(rule="r" * 300 + "-x", connection_id="long-rule"),         # an operator's name
        event(host="surrogate\udcff.example", connection_id="surrogate"),  # not UTF-8
        event(port=2**40, connection_id="huge-port"),                    # not an INTEGER
        event(bytes_up=2**70, phase="close", connection_id="huge-bytes"),  # not a BIGINT
        event(reason="x" * 100_000, path="/" + "p" * 100_000, connection_id="huge-secret"),
    ]
    log = ProcessAuditLog(store_url) if writer == "process" else AuditLog(store_url)
    try:
        for i in range(20):
            log.emit(event(connection_id=f"before-{i}"))
        for bad in hostile:
            log.emit(bad)
        for i in range(20):
            log.emit(event(connection_id=f"after-{i}"))
        started = time.monotonic()
        log.flush(timeout=30)
        assert time.monotonic() - started < 15
        records = {r["connection_id"]: r for r in query(
            log.engine, Filter(), sealer=log.sealer, limit=1000)}
        assert verify(log.engine, log.sealer).ok
    finally:
        log.close()
    expected = {f"before-{i}" for i in range(20)} | {f"after-{i}" for i in range(20)} \
        | {bad.connection_id for bad in hostile}
    assert set(records) == expected         # nothing lost, every record stored once
    # SQLite stores a NUL as it is; PostgreSQL refuses it, so the safe form escapes it.
    assert records["nul"]["host"] in ("nul\0host.example", "nul\\x00host.example")
    assert len(records["long-rule"]["rule"]) == 300 and MARK in records["long-rule"]["rule"]
    assert records["huge-port"]["port"] is None
    assert records["huge-bytes"]["bytes_up"] == 2**63 - 1
    assert len(records["huge-secret"]["reason"]) <= 4096
    assert MARK in records["huge-secret"]["path"]
    safe = {name for name, r in records.items() if "stored in safe form" in r["reason"]}
    if store_url.startswith("postgresql"):
        assert safe == {"nul", "surrogate", "huge-bytes"}
    else:
        assert safe == {"surrogate", "huge-bytes"}


def test_writer_logs_one_line_not_a_traceback_for_a_refused_record(
        pg_url: str, audit_key: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with AuditLog(pg_url) as log:
        log.emit(event(host="nul\0host.example"))
        log.flush(timeout=30)
        with log.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_events")).scalar() == 1
    refused = [r for r in caplog.records if "safe form" in r.getMessage()]
    assert len(refused) == 1 and refused[0].exc_info is None
    assert not any(r.exc_info for r in caplog.records if r.name == "egressguard.audit")
