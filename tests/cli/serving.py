"""`egressguard serve` as its own process, as an operator runs it, for the serve tests:
started with a private home, its announcements read up to the audit log line (the last
one: everything listens by then), stopped with SIGTERM on the way out."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


@contextlib.contextmanager
def serve_process(home: Path, *args: str, stderr: IO[str] | int = subprocess.PIPE,
                  stop_timeout: float = 60.0
                  ) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """(process, what it printed on stdout up to its audit log line) of `egressguard
    serve *args`; SIGTERM at the end unless it already exited (killed after
    `stop_timeout` s, then the failure is raised)."""
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(home)})
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        while not lines or not lines[-1].startswith("egressguard: audit log"):
            line = proc.stdout.readline()
            if not line:
                proc.wait(10)
                said = proc.stderr.read() if proc.stderr is not None else ""
                raise AssertionError(f"serve ended ({proc.returncode}): {lines} {said}")
            lines.append(line)
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
