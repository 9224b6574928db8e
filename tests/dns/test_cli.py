"""`egressguard dns serve` as a real process, probed with `egressguard dns query`."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from egressguard.cli.dns import parse_endpoint
from egressguard.cli.main import app
from tests.dns.conftest import POLICY
from tests.dns.upstream_server import Upstream

pytestmark = pytest.mark.timeout(60)


LISTENING = re.compile(r"listening on (127\.0\.0\.1:\d+) ")


@pytest.fixture
def served(upstream: Upstream, policy_file: Path, tmp_path: Path
           ) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from egressguard.cli.main import main; main()", "dns", "serve",
         "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream.port}",
         "--policy", str(policy_file), "--events", str(events), "--timeout", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        proc.kill()
        pytest.fail(f"dns serve did not start: {proc.communicate()}")
    line = proc.stdout.readline()
    bound = LISTENING.search(line)  # port 0: the server picks and binds one, no race
    assert bound, line + proc.stderr.read()
    yield bound.group(1), proc, events
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _query(server: str, name: str, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["dns", "query", name, "--server", server, *extra])
    return result.exit_code, result.output


def test_serve_answers_allowed_and_refuses_denied_with_reason(
        served: tuple[str, subprocess.Popen[str], Path]) -> None:
    server, _, events = served
    code, out = _query(server, "allowed.example.com")
    assert code == 0 and "93.184.216.34" in out
    code, out = _query(server, "metadata.example.com", "--tcp")
    assert code == 1 and "NXDOMAIN" in out and "[EDE 15]" in out and "link-local" in out
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert [(e["host"], e["verdict"]) for e in lines] == [
        ("allowed.example.com", "allow"), ("metadata.example.com", "deny")]


def test_query_prints_json_and_yaml_with_the_same_data(
        served: tuple[str, subprocess.Popen[str], Path]) -> None:
    server, _, _ = served
    code, out = _query(server, "metadata.example.com", "-o", "json")
    refused = json.loads(out)
    assert code == 1 and refused["status"] == "NXDOMAIN" and refused["answers"] == []
    assert refused["reasons"][0]["ede"] == 15 and "link-local" in refused["reasons"][0]["text"]
    code, out = _query(server, "allowed.example.com", "-o", "yaml")
    answered = yaml.safe_load(out)
    assert code == 0 and answered["status"] == "NOERROR"
    assert [a["data"] for a in answered["answers"]] == ["93.184.216.34"]


def test_sighup_reloads_the_policy_file_and_sigterm_stops_cleanly(
        served: tuple[str, subprocess.Popen[str], Path], policy_file: Path) -> None:
    server, proc, _ = served
    assert _query(server, "evil.net")[0] == 1
    policy_file.write_text(POLICY.replace("upper.test.org]", "upper.test.org, evil.net]"))
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while _query(server, "evil.net")[0] != 0:
        assert time.monotonic() < deadline, "reload not applied"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_bad_policy_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("callouts: [{callout_type: sql, uri_regex: '(a'}]\n")
    result = CliRunner().invoke(app, ["dns", "serve", "--policy", str(path)])
    assert result.exit_code == 2
    assert "invalid regular expression" in result.output


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("[::1]:53", ("::1", 53)),
    ("10.0.0.2", ("10.0.0.2", 53)), ("::1", ("::1", 53))])
def test_endpoints_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text, 53) == expected


@pytest.mark.parametrize("text", ["", "host:port", "1.2.3.4:99999", "[::1]:x"])
def test_bad_endpoints_are_errors(text: str) -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        parse_endpoint(text, 53)
