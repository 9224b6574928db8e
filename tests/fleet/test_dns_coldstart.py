"""The DNS filter started while PostgreSQL is down answers by its last-known-good policy
from the encrypted local cache (the one `serve` keeps too), and catches up when the store
returns; with no cache it does not start (fail closed). Real processes, real packets."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from egressguard.policy.load import load_policy_text
from egressguard.store import Store
from egressguard.store.store import default_policy
from tests.dns.upstream_server import Upstream
from tests.fleet.conftest import AUDIT_KEY, EGRESSGUARD, stop
from tests.relay import Relay

pytestmark = pytest.mark.timeout(120)
NAME = "allowed.example.com"  # the upstream answers 93.184.216.34
ALLOW = f"restrict_outbound_network_access: Enabled\nallowed_fqdn_list: [{NAME}]\n"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


def _dns(home: Path, store: str, upstream: Upstream) -> tuple[subprocess.Popen[str], int]:
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [EGRESSGUARD, "dns", "serve", "--listen", "127.0.0.1:0", "--upstream",
         f"127.0.0.1:{upstream.port}", "--cluster", "default", "--store", store,
         "--no-audit", "--timeout", "1"],
        stdout=subprocess.PIPE, stderr=open(home / "log", "a"), text=True,  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(home),
             "EGRESSGUARD_AUDIT_KEY": AUDIT_KEY})
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    found = re.search(r"listening on [\d.]+:(\d+)", line)
    if not found:
        proc.kill()
        raise AssertionError(line + (home / "log").read_text())
    return proc, int(found.group(1))


def _rcode(port: int) -> int:
    reply = DNSRecord.question(NAME, "A").send("127.0.0.1", port, timeout=3)
    return int(DNSRecord.parse(reply).header.rcode)


def test_dns_filter_started_while_the_store_is_down_answers_by_the_cached_policy(
        tmp_path: Path, pg_relay: tuple[Relay, str], pg_url: str, upstream: Upstream) -> None:
    cut, relayed = pg_relay
    with Store(pg_url) as store:
        store.commit("default", load_policy_text(ALLOW), "test", "allow one name")
    home = tmp_path / "dns"
    proc, port = _dns(home, relayed, upstream)
    try:
        assert _rcode(port) == RCODE.NOERROR   # the store's version, now cached
    finally:
        stop(proc)
    assert len(list((home / "policy-cache").iterdir())) == 1

    cut.cut()
    proc, port = _dns(home, relayed, upstream)
    try:
        assert _rcode(port) == RCODE.NOERROR, "the cached policy is not in force"
        with Store(pg_url) as store:   # changed while the filter cannot see the store
            store.commit("default", default_policy(), "test", "deny all again")
        cut.restore()
        deadline = time.monotonic() + 20
        while _rcode(port) != RCODE.NXDOMAIN:
            assert time.monotonic() < deadline, "did not catch up with the store"
            time.sleep(0.2)
        assert proc.poll() is None
    finally:
        stop(proc)
    log = (home / "log").read_text()
    assert "last-known-good" in log and "reachable again" in log, log
    assert "Traceback" not in log, log


def test_dns_filter_with_no_cache_does_not_start_while_the_store_is_down(
        tmp_path: Path, pg_relay: tuple[Relay, str], upstream: Upstream) -> None:
    cut, relayed = pg_relay
    cut.cut()
    home = tmp_path / "cold"
    home.mkdir(mode=0o700)
    done = subprocess.run(
        [EGRESSGUARD, "dns", "serve", "--listen", "127.0.0.1:0", "--upstream",
         f"127.0.0.1:{upstream.port}", "--cluster", "default", "--store", relayed,
         "--no-audit"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "EGRESSGUARD_HOME": str(home), "EGRESSGUARD_AUDIT_KEY": AUDIT_KEY})
    assert done.returncode == 2, done
    assert done.stderr.startswith("error: "), done.stderr
    assert "store" in done.stderr and "Traceback" not in done.stderr
