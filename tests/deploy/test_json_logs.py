"""`--log-format json` on `serve`, `dns serve` and `api`: one JSON object per line with
time, level, logger and message; a traceback only at debug level (it can carry request
data). `--traces console` writes one span per line (the OpenTelemetry SDK's JSON)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egressguard import logsetup

pytestmark = pytest.mark.timeout(90)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
KEYS = {"time", "level", "logger", "message"}
# Lines the commands print with typer.echo rather than through logging.
BANNERS = ("egressguard: shutting down", "egressguard dns: shutting down")


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _boom(logger: logging.Logger) -> None:
    try:
        raise RuntimeError("secret-request-detail")
    except RuntimeError:
        logger.exception("answer failed\nsecond line")


def test_json_record_has_the_fields_and_no_traceback_unless_debug() -> None:
    stream = io.StringIO()
    logsetup.configure("info", "json", stream)
    _boom(logging.getLogger("egressguard.dns.server"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1  # the newline in the message is escaped, not a second line
    entry = json.loads(lines[0])
    assert set(entry) == KEYS
    assert entry["level"] == "error" and entry["logger"] == "egressguard.dns.server"
    assert entry["message"] == "answer failed\nsecond line"
    assert entry["time"].endswith("+00:00")
    assert "secret-request-detail" not in stream.getvalue()

    for level, debug in (("debug", False), ("info", True)):  # --log-level debug, --debug
        stream = io.StringIO()
        logsetup.configure(level, "json", stream, debug=debug)
        _boom(logging.getLogger("egressguard.gateway"))
        entry = json.loads(stream.getvalue())
        assert set(entry) == {*KEYS, "exception"}
        assert "RuntimeError: secret-request-detail" in entry["exception"]


def test_text_format_is_the_former_one() -> None:
    stream = io.StringIO()
    logsetup.configure("warning", "text", stream)
    logging.getLogger("egressguard.gateway").info("not shown")
    logging.getLogger("egressguard.gateway").warning("shown")
    line = stream.getvalue().strip()
    assert line.endswith(" WARNING shown") and "not shown" not in line


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json_lines(stderr: str) -> list[dict[str, object]]:
    entries = []
    for line in stderr.splitlines():
        if line in BANNERS:
            continue
        entry = json.loads(line)  # every other stderr line is a JSON object
        assert isinstance(entry, dict) and set(entry) >= KEYS
        entries.append(entry)
    return entries


def test_dns_serve_logs_json_lines(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("restrict_outbound_network_access: true\n")
    port = _free_udp_port()
    proc = subprocess.Popen(
        [EGRESSGUARD, "dns", "serve", "--listen", f"127.0.0.1:{port}", "--policy", str(policy),
         "--no-audit", "--log-format", "json", "--log-level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "listening" in proc.stdout.readline()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"\x12\x34\x01\x00\x00\x01garbage", ("127.0.0.1", port))
            sock.recvfrom(4096)  # the filter answers FORMERR and logs it at debug
        time.sleep(0.3)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    entries = _json_lines(stderr)
    assert any(str(e["logger"]).startswith("egressguard.dns") and e["level"] == "debug"
               and "malformed query" in str(e["message"]) for e in entries), stderr


def test_serve_logs_json_lines_and_rejects_an_unknown_format(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("restrict_outbound_network_access: true\n")
    bad = subprocess.run([EGRESSGUARD, "serve", "--log-format", "xml"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "xml" in bad.stderr and "Traceback" not in bad.stderr
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--policy", str(policy), "--no-api",
         "--no-audit", "--log-format", "json", "--log-level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "listening" in proc.stdout.readline()
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    _json_lines(stderr)


@pytest.mark.parametrize("command", [["serve"], ["dns", "serve"]])
def test_an_unknown_log_level_is_one_line_not_a_traceback(command: list[str]) -> None:
    result = subprocess.run([EGRESSGUARD, *command, "--log-level", "loud"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --log-level 'loud': expected debug, info, "
                                     "warning, error")


def _api(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    """`egressguard api` on a free port with a fresh store; (process, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [EGRESSGUARD, "api", "--port", str(port), "--store",
         f"sqlite:///{tmp_path / 'store.db'}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "EGRESSGUARD_HOME": str(tmp_path / "home")})
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.communicate()[1])


def _get(port: int, path: str, host: str = "x") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def _api_healthz(tmp_path: Path, *args: str) -> str:
    """Run `egressguard api ARGS`, ask /healthz once, stop it; its stderr."""
    proc, port = _api(tmp_path, *args)
    try:
        assert _get(port, "/healthz").startswith(b"HTTP/1.1 200")
        time.sleep(0.3)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    return stderr


def test_api_logs_json_lines_uvicorns_included(tmp_path: Path) -> None:
    stderr = _api_healthz(tmp_path, "--log-format", "json")
    lines = [line for line in stderr.splitlines()
             if line and not line.startswith(("bootstrap admin token", "egt_"))]
    entries = _json_lines("\n".join(lines))
    loggers = {str(e["logger"]) for e in entries}
    assert "uvicorn.error" in loggers, stderr            # start-up and shutdown lines
    assert any(e["logger"] == "uvicorn.access" and "/healthz" in str(e["message"])
               for e in entries), stderr


def test_api_traces_each_request_to_the_console(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    stderr = _api_healthz(tmp_path, "--traces", "console", "--log-level", "warning")
    spans = [json.loads(line) for line in stderr.splitlines() if line.startswith('{"name"')]
    assert any(s["name"].startswith("GET") and "/healthz" in json.dumps(s["attributes"])
               and s["resource"]["attributes"]["service.name"] == "egressguard-api"
               for s in spans), stderr


def test_serve_traces_a_refusal_and_refuses_an_unknown_exporter(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    bad = subprocess.run([EGRESSGUARD, "serve", "--traces", "zipkin"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "zipkin" in bad.stderr and "Traceback" not in bad.stderr
    policy = tmp_path / "p.yaml"
    policy.write_text("restrict_outbound_network_access: true\n")
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--policy", str(policy), "--no-api",
         "--no-audit", "--traces", "console"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        found = re.search(r"listening on (\S+):(\d+)", proc.stdout.readline())
        assert found
        answer = _get(int(found.group(2)), "http://denied.test/", "denied.test")
        assert answer.startswith(b"HTTP/1.1 403")
        time.sleep(0.3)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    spans = [json.loads(line) for line in stderr.splitlines() if line.startswith('{"name"')]
    assert [(s["name"], s["attributes"]["server.address"], s["attributes"][
        "egressguard.permitted"]) for s in spans] == [("egressguard.http", "denied.test", False)]
