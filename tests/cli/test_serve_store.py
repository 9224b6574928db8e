"""`egressguard serve` in its default, store-backed mode: the REST API in the same process
changes what the gateway enforces at once, and every decision lands in the audit log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import Server, start_http

pytestmark = pytest.mark.timeout(90)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


class Running:
    def __init__(self, proc: subprocess.Popen[str], proxy: str, api: str, token: str) -> None:
        self.proc, self.proxy, self.api, self.token = proc, proxy, api, token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def upstream() -> Iterator[Server]:
    server = start_http()
    yield server
    server.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Running]:
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
         "--resolve", "up.test=127.0.0.1", "--no-system-resolver", "--audit-writer", "thread"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(tmp_path)})
    assert proc.stdout is not None and proc.stderr is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    proxy = re.search(r"listening on (\S+)", lines[0])
    api = re.search(r"REST API on (\S+)", lines[1])
    assert proxy and api, lines
    token = ""
    while not token.startswith("egt_"):
        token = proc.stderr.readline().strip()
    yield Running(proc, f"http://{proxy.group(1)}", api.group(1), token)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_api_change_is_enforced_at_once_and_both_decisions_are_audited(
        gateway: Running, upstream: Server) -> None:
    url = f"http://up.test:{upstream.port}/hello"
    with httpx.Client(proxy=gateway.proxy) as client:
        denied = client.get(url)
        assert (denied.status_code, denied.headers["X-Egressguard-Rule"]) == (403, "guard:loopback")

        patch = {"properties": {
            "networkRuleCollections": [{
                "name": "loopback", "priority": 100, "action": "allow",
                "rules": [{"name": "up", "destinations": ["127.0.0.0/8"],
                           "protocols": ["TCP"], "ports": [str(upstream.port)],
                           "matchResolvedNames": True}]}]}}
        changed = httpx.patch(f"{gateway.api}/v1/clusters/default", json=patch,
                              headers=gateway.auth)
        assert changed.status_code == 200, changed.text
        started = time.monotonic()
        assert client.get(url).status_code == 200
        assert time.monotonic() - started < 1.0

    deadline = time.monotonic() + 5
    while True:
        records = httpx.get(f"{gateway.api}/v1/audit", params={"dest": "up.test"},
                            headers=gateway.auth).json()
        decisions = [r for r in records["items"] if r.get("phase") == "decision"]
        if len(decisions) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    verdicts = sorted((r["verdict"], r["layer"]) for r in decisions)
    assert verdicts == [("allow", "network"), ("deny", "guard")]


def test_viewer_token_cannot_change_the_policy(gateway: Running) -> None:
    created = httpx.post(f"{gateway.api}/v1/tokens", json={"name": "v", "role": "viewer"},
                         headers=gateway.auth)
    assert created.status_code in (200, 201), created.text
    viewer = {"Authorization": f"Bearer {created.json()['token']}"}
    patch = {"properties": {"restrictOutboundNetworkAccess": "Disabled"}}
    refused = httpx.patch(f"{gateway.api}/v1/clusters/default", json=patch, headers=viewer)
    assert refused.status_code == 403
    shown = httpx.get(f"{gateway.api}/v1/clusters/default", headers=viewer).json()
    assert shown["properties"]["restrictOutboundNetworkAccess"] in ("Enabled", True)
