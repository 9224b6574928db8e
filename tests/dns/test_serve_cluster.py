"""`egressguard dns serve --cluster N` follows the store: a `cluster update` made by
another process is in force in the DNS filter within 1 s (real processes, real DNS
packets, the local upstream of `upstream_server`), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord
from typer.testing import CliRunner

from egressguard.cli.main import app
from egressguard.store import Store
from tests.dns.upstream_server import Upstream

pytestmark = pytest.mark.timeout(90)
NAME = "allowed.example.com"  # the upstream answers 93.184.216.34


def _egressguard(*args: str) -> list[str]:
    return [sys.executable, "-c", "from egressguard.cli.main import main; main()", *args]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(home)}


@pytest.fixture
def served(upstream: Upstream, store_url: str, tmp_path: Path
           ) -> Iterator[tuple[tuple[str, int], subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        _egressguard("dns", "serve", "--listen", "127.0.0.1:0", "--upstream",
                     f"127.0.0.1:{upstream.port}", "--cluster", "default", "--store",
                     store_url, "--timeout", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready:
        proc.kill()
        pytest.fail(f"dns serve did not start: {proc.communicate()}")
    line = proc.stdout.readline()
    found = re.search(r"listening on ([\d.]+):(\d+)", line)
    assert found, line + proc.stderr.read()
    policy_line = proc.stdout.readline()
    assert "store cluster default" in policy_line, policy_line
    yield (found.group(1), int(found.group(2))), proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ask(server: tuple[str, int], name: str, timeout: float = 1.0) -> DNSRecord:
    reply = DNSRecord.question(name, "A").send(server[0], server[1], timeout=timeout)
    return DNSRecord.parse(reply)


def test_cluster_update_flips_nxdomain_to_an_answer_within_one_second(
        served: tuple[tuple[str, int], subprocess.Popen[str]], store_url: str,
        tmp_path: Path) -> None:
    server, proc = served
    # The first denial waits until the audit writer is up and has made it durable.
    before = _ask(server, NAME, timeout=15.0)
    assert before.header.rcode == RCODE.NXDOMAIN and not before.rr  # deny-all cluster
    answered: list[tuple[float, DNSRecord]] = []
    stop = threading.Event()

    def ask_until_answered() -> None:  # probes from before the update is made
        while not stop.is_set():
            try:
                reply = _ask(server, NAME, timeout=0.5)
            except TimeoutError:  # one slow answer on a busy machine: ask again
                continue
            if reply.header.rcode == RCODE.NOERROR and reply.rr:
                answered.append((time.time(), reply))
                return
            time.sleep(0.01)

    prober = threading.Thread(target=ask_until_answered, daemon=True)
    prober.start()
    update = subprocess.run(
        _egressguard("cluster", "update", "--name", "default", "--add-allowed-fqdn", NAME,
                     "--store", store_url),
        capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    assert update.returncode == 0, update.stderr
    prober.join(timeout=15)
    stop.set()
    assert answered, "the change never reached the filter"
    with Store(store_url) as store:  # when the version was committed (wall clock)
        version = store.current("default")
    assert NAME in version.policy.allowed_fqdn_list
    first, reply = answered[0]
    elapsed = first - version.created_at.timestamp()
    print(f"\ncluster update -> DNS answer ({store_url.split(':')[0]}): {elapsed * 1e3:.0f} ms")
    assert str(reply.rr[0].rdata) == "93.184.216.34"
    assert elapsed < 1.0
    assert _ask(server, "evil.net").header.rcode == RCODE.NXDOMAIN  # still deny by default
    assert proc.poll() is None


def test_unknown_cluster_is_one_line_error_not_a_traceback(sqlite_url: str) -> None:
    result = CliRunner().invoke(app, ["dns", "serve", "--listen", "127.0.0.1:0",
                                      "--cluster", "nope", "--store", sqlite_url])
    assert result.exit_code == 2
    assert result.output.startswith("error: cluster 'nope' not found")
    assert len(result.output.strip().splitlines()) == 1
