"""`egressguard serve --policy F`: the REST API in the same process describes the FILE the
proxy enforces (its check agrees with the proxy), and every policy write answers 409 and
changes nothing, neither in the store nor in what the proxy enforces."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from egressguard.store import Store
from tests.cli.serving import serve_process
from tests.gateway.conftest import Server

pytestmark = pytest.mark.timeout(120)
POLICY = """\
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: web
    priority: 200
    rules:
      - {{name: up, targets: [up.test], protocols: ['http:{port}']}}
network_rule_collections:
  - name: loopback          # names the CIDR: lifts the address guard for up.test
    priority: 100
    rules:
      - {{name: lo, destinations: [127.0.0.0/8], protocols: [TCP], ports: ['{port}']}}
"""
FILE_MODE = "PolicyFromFile"


@contextlib.contextmanager
def serving(home: Path, *extra: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(proxy URL, API URL, admin auth header) of a running `egressguard serve`."""
    with serve_process(
            home, "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
            "--resolve", "up.test=127.0.0.1", "--resolve", "down.test=127.0.0.1",
            "--no-system-resolver", "--audit-writer", "thread", *extra,
            stop_timeout=20) as (proc, lines):
        proxy = re.search(r"listening on (\S+)", lines[0])
        api = re.search(r"REST API on (\S+)", lines[1])
        assert proxy and api and proc.stderr is not None, lines
        token = ""
        while not token.startswith("egt_"):
            token = proc.stderr.readline().strip()
        yield (f"http://{proxy.group(1)}", api.group(1),
               {"Authorization": f"Bearer {token}"})
    assert proc.returncode == 0


def test_file_mode_api_checks_what_the_proxy_enforces_and_refuses_every_write(
        tmp_path: Path, store_url: str, upstream: Server) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=upstream.port))
    with Store(store_url) as store:  # the store's own policy says the opposite: allow all
        store.commit("default", store.current("default").policy.model_copy(
            update={"restrict_outbound_network_access": False}), "op", "open")
        stored = store.current("default").number
    allowed, denied = (f"http://up.test:{upstream.port}/x",
                       f"http://down.test:{upstream.port}/x")
    with serving(tmp_path / "home", "--policy", str(policy), "--store", store_url) as (
            proxy, api, admin), httpx.Client(proxy=proxy) as client:
        for url, status, verdict in ((allowed, 200, "allow"), (denied, 403, "deny")):
            assert client.get(url).status_code == status
            asked = httpx.post(f"{api}/v1/check", headers=admin,
                               json={"url": url, "addresses": ["127.0.0.1"]})
            assert asked.status_code == 200, asked.text
            assert asked.json()["verdict"] == verdict, asked.json()
        shown = httpx.get(f"{api}/v1/clusters/default", headers=admin).json()["properties"]
        assert shown["restrictOutboundNetworkAccess"] == "Enabled"
        assert (shown["policySource"], shown["policyFile"]) == ("file", str(policy))

        writes = [
            ("PATCH", "/v1/clusters/default",
             {"properties": {"restrictOutboundNetworkAccess": "Disabled"}}),
            ("PUT", "/v1/clusters/default", {"properties": {}}),
            ("PUT", "/v1/clusters/prod", {"properties": {}}),
            ("PUT", "/v1/clusters/default/applicationRuleCollections/all",
             {"priority": 100, "rules": [{"name": "any", "targets": ["*"]}]}),
            ("DELETE", "/v1/clusters/default/applicationRuleCollections/web", None),
            ("POST", "/v1/clusters/default/rollback", {"version": 1}),
            ("POST", "/v1/mgmt", {"command": ".delete cluster policy callout"}),
            ("POST", "/v1/mgmt", {"command": ".alter cluster policy callout @'[]'"}),
        ]
        for method, path, body in writes:
            answer = httpx.request(method, f"{api}{path}", json=body, headers=admin)
            assert answer.status_code == 409, (method, path, answer.text)
            error = answer.json()["error"]
            assert error["code"] == FILE_MODE
            assert error["message"] == (f"this gateway enforces the policy file {policy}; "
                                        "edit the file, or run serve without --policy")
        assert client.get(denied).status_code == 403  # nothing changed what is enforced
    with Store(store_url) as store:
        assert store.current("default").number == stored and store.clusters() == ["default"]
