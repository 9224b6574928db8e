"""Fleet tests: gateways as real processes on one PostgreSQL store, reached through a
relay the test can cut (the store outage: the `pg_relay` fixture)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.served import EGRESSGUARD

__all__ = ["EGRESSGUARD", "closing_upstream", "serve", "stop"]


@pytest.fixture
def closing_upstream() -> Iterator[int]:
    """A loopback port that accepts and closes (an allowed request gets 502, not 403)."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=512)

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield sock.getsockname()[1]
    sock.close()


AUDIT_KEY = base64.b64encode(os.urandom(32)).decode()


def serve(home: Path, store: str, *options: str) -> tuple[subprocess.Popen[str], int]:
    """`egressguard serve` on `store` with its own home; (process, proxy port) once it
    listens. Its stdout lines go to `home/stdout`, stderr to `home/log`."""
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--no-system-resolver",
         "--store", store, *options],
        stdout=subprocess.PIPE, stderr=open(home / "log", "w"), text=True,  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(home),
             "EGRESSGUARD_AUDIT_KEY": AUDIT_KEY})
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if "listening on 127.0.0.1:" not in first:
        proc.kill()
        raise AssertionError(first + (home / "log").read_text())
    out = open(home / "stdout", "w")  # noqa: SIM115

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()

    threading.Thread(target=drain, daemon=True).start()
    return proc, int(first.rsplit(":", 1)[1].split()[0])


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM and wait (killed after 20 s)."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
