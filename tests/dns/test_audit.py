"""`egressguard dns serve` writes its decisions to the audit log: a DNS decision appears in
`egressguard logs` with the fields a proxy decision has (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import DNSRecord
from typer.testing import CliRunner

from egressguard.cli.main import app
from tests.dns.upstream_server import Upstream

pytestmark = pytest.mark.timeout(90)


def _serve(upstream: Upstream, policy: Path, env: dict[str, str], *extra: str
           ) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from egressguard.cli.main import main; main()", "dns", "serve",
         "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream.port}",
         "--policy", str(policy), "--timeout", "1", "--cluster", "edge", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    if not ready:
        proc.kill()
        pytest.fail(f"dns serve did not start: {proc.communicate()}")
    line = proc.stdout.readline()
    assert "listening on" in line, line + proc.stderr.read()  # type: ignore[union-attr]
    host, port = line.split("listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)
    return proc, (host, int(port))


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def _ask(addr: tuple[str, int], name: str) -> int:
    reply = DNSRecord.parse(DNSRecord.question(name).send(*addr, timeout=15))
    return int(reply.header.rcode)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("EGRESSGUARD_HOME", str(path))  # the same key for writer and reader
    yield path


def _logs(store_url: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["logs", "--kind", "dns", "--output", "json",
                                      "--store", store_url])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


def test_dns_decisions_appear_in_egressguard_logs_with_the_proxy_fields(
        upstream: Upstream, policy_file: Path, store_url: str, home: Path) -> None:
    proc, addr = _serve(upstream, policy_file,
                        {"EGRESSGUARD_STORE": store_url, "EGRESSGUARD_HOME": str(home)})
    try:
        assert _ask(addr, "allowed.example.com") == 0
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30  # the audit writer starts with the filter
        while not records and time.monotonic() < deadline:
            time.sleep(0.2)
            records = _logs(store_url)
        assert _ask(addr, "evil.net") == 3   # NXDOMAIN only once the record is durable,
        records = _logs(store_url)           # so it is there at once
    finally:
        err = _stop(proc)
    assert "Traceback" not in err, err
    by_host = {r["host"]: r for r in records}
    assert set(by_host) == {"evil.net", "allowed.example.com"}, records
    denied, allowed = by_host["evil.net"], by_host["allowed.example.com"]
    for record in (denied, allowed):
        assert record["kind"] == "dns" and record["cluster"] == "edge"
        assert record["client_address"] == "127.0.0.1"
        assert len(record["policy_version"]) == 12 and record["connection_id"]
        assert record["protocol"] == "udp" and record["method"] == "A"
    assert (denied["verdict"], denied["outcome"], denied["layer"], denied["rule"]) == (
        "deny", "deny", "default", "default")
    assert "not allowed" in denied["reason"]
    assert (allowed["verdict"], allowed["layer"], allowed["rule"]) == (
        "allow", "application", "application:allowed/example")
    assert allowed["resolved_address"] == "93.184.216.34"


def test_without_a_store_dns_serve_creates_none_and_no_audit_turns_it_off(
        upstream: Upstream, policy_file: Path, sqlite_url: str, home: Path) -> None:
    env = {"EGRESSGUARD_HOME": str(home), "EGRESSGUARD_STORE": ""}
    proc, addr = _serve(upstream, policy_file, env)
    try:
        assert _ask(addr, "evil.net") == 3
    finally:
        _stop(proc)
    assert not list(home.iterdir())  # no store nobody reads was created
    proc, addr = _serve(upstream, policy_file, {**env, "EGRESSGUARD_STORE": sqlite_url},
                        "--no-audit")
    try:
        assert _ask(addr, "evil.net") == 3
    finally:
        _stop(proc)
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
