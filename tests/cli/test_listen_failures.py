"""Every server command fails to start in one line with a hint when its port is taken
(`serve` is covered in test_serve_store.py): `api` printed uvicorn's six log lines and
exit 3, `dns serve` asyncio's message without a hint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

EGRESSGUARD = str(Path(sys.executable).with_name("egressguard"))


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EGRESSGUARD, *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "EGRESSGUARD_HOME": str(home)})


def _one_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "INFO:" not in done.stderr and "ERROR:" not in done.stderr, done.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_api_on_a_taken_port_is_one_line_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _one_line(_run(tmp_path, "api", "--port", str(port)),
                  f"the REST API cannot listen on 127.0.0.1:{port}",
                  "the address is already in use", "hint:", "--port")


def test_dns_serve_on_a_taken_port_is_one_line_naming_the_option(tmp_path: Path) -> None:
    with socket.socket(type=socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        _one_line(_run(tmp_path, "dns", "serve", "--listen", f"127.0.0.1:{port}",
                       "--upstream", "127.0.0.1:9", "--no-audit"),
                  f"the DNS filter cannot listen on 127.0.0.1:{port}",
                  "the address is already in use", "hint:", "--listen")
