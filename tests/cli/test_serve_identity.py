"""`egressguard serve` with workload identities, as an operator runs it: identities made
with the CLI in the store serve uses, Basic through the proxy, `logs --identity` shows
who, `identity revoke` denies within a second on a kept-alive connection."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gateway.conftest import Server
from tests.gateway.test_identity import Client

pytestmark = pytest.mark.timeout(120)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
POLICY = """\
restrict_outbound_network_access: Enabled
trusted_ranges: [127.0.0.0/8]
require_identity: true
application_rule_collections:
  - name: web
    priority: 100
    identities: [web]
    rules:
      - {name: up, targets: [up.test], protocols: ["http:*"]}
"""


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EGRESSGUARD, *args], capture_output=True, text=True, timeout=100,
                          check=False, env={**os.environ, "EGRESSGUARD_HOME": str(home)})


def test_serve_authenticates_store_identities_logs_them_and_applies_revocation(
        tmp_path: Path, upstream: Server) -> None:
    home = tmp_path / "home"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    made = cli(home, "identity", "create", "web", "-o", "json")
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["secret"]
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--policy", str(policy), "--listen", "127.0.0.1:0",
         "--no-api", "--resolve", "up.test=127.0.0.1", "--no-system-resolver",
         "--audit-writer", "thread"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(home)})
    assert proc.stdout is not None
    try:
        found = re.search(r"listening on \S+:(\d+)", proc.stdout.readline())
        assert found, proc.stderr.read() if proc.poll() is not None else ""
        client = Client(int(found.group(1)))
        credential = "Basic " + base64.b64encode(f"web:{secret}".encode()).decode()
        assert client.get(upstream.port)[0] == 407
        assert client.get(upstream.port, credential)[0] == 200
        assert cli(home, "identity", "revoke", "web").returncode == 0
        revoked = time.monotonic()
        while True:
            try:
                status = client.get(upstream.port, credential)[0]
            except ConnectionError:  # revoked while a request was in flight: cut
                client.close()
                client = Client(int(found.group(1)))
                status = client.get(upstream.port, credential)[0]
            if status != 200:
                break
            assert time.monotonic() - revoked < 1.0
            time.sleep(0.02)
        assert status == 407 and time.monotonic() - revoked < 1.0
        client.close()
        deadline = time.monotonic() + 10
        while True:
            logs = cli(home, "logs", "--identity", "web", "-o", "json")
            records = [json.loads(line) for line in logs.stdout.splitlines()]
            if any(r["outcome"] == "allow" for r in records) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert records and {r["client_identity"] for r in records} == {"web"}
        assert {r["host"] for r in records} == {"up.test"}
        anonymous = cli(home, "logs", "--identity", "", "-o", "json")
        assert any(json.loads(line)["rule"] == "identity:required"
                   for line in anonymous.stdout.splitlines())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
