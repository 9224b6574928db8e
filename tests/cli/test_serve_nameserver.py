"""`egressguard serve --nameserver IP[:PORT]`: names are asked of that DNS server (a real
one on loopback here), not of the system resolver; a malformed value is one line, exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from tests.gateway.conftest import Server

pytestmark = pytest.mark.timeout(60)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
POLICY = """\
restrict_outbound_network_access: Enabled
trusted_ranges: [127.0.0.0/8]
application_rule_collections:
  - name: web
    priority: 200
    rules:
      - {{name: up, targets: [up.nameserver.test], protocols: ['http:{port}']}}
"""


class Zone(BaseResolver):  # type: ignore[misc]
    """up.nameserver.test A 127.0.0.1; anything else NXDOMAIN; records what was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower()
        with self.lock:
            self.asked.append(name)
        if name == "up.nameserver.test." and request.q.qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, rdata=A("127.0.0.1"), ttl=60))
        elif name != "up.nameserver.test.":
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def zone() -> Iterator[tuple[Zone, int]]:
    resolver = Zone()
    server = DNSServer(resolver, address="127.0.0.1", port=0,
                       logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"))
    server.start_thread()
    yield resolver, server.server.server_address[1]
    server.stop()


def test_names_are_resolved_by_the_given_nameserver(
        tmp_path: Path, zone: tuple[Zone, int], upstream: Server) -> None:
    asked, dns_port = zone
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=upstream.port))
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--policy", str(policy),
         "--no-api", "--no-audit", "--nameserver", f"127.0.0.1:{dns_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(tmp_path)})
    assert proc.stdout is not None
    try:
        found = re.search(r"listening on (\S+)", proc.stdout.readline())
        assert found, proc.stderr.read() if proc.poll() is not None else ""
        with httpx.Client(proxy=f"http://{found.group(1)}", timeout=10) as client:
            ok = client.get(f"http://up.nameserver.test:{upstream.port}/x")
            assert ok.status_code == 200
            assert "up.nameserver.test." in asked.asked  # asked of our server, not libc's
            # A name no rule allows is refused without being looked up.
            refused = client.get(f"http://secret.nameserver.test:{upstream.port}/")
            assert refused.status_code == 403
            assert "secret.nameserver.test." not in asked.asked
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


@pytest.mark.parametrize("value", ["nameserver.test", "127.0.0.1:99999", "[::1]:x"])
def test_malformed_nameserver_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=80))
    done = subprocess.run(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--policy", str(policy),
         "--no-api", "--no-audit", "--nameserver", value], capture_output=True, text=True,
        env={**os.environ, "EGRESSGUARD_HOME": str(tmp_path)}, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --nameserver"), done.stderr
    assert "Traceback" not in done.stderr
