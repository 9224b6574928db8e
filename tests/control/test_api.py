"""The REST API: roles, ARM-shaped properties, bad input, commands, what-if, versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from egressguard.control.api import create_app
from egressguard.store import Store

pytestmark = pytest.mark.timeout(60)
ROLES = ("admin", "operator", "viewer", "auditor")
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


@pytest.fixture
def client(sqlite_store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_store)) as c:
        yield c


@pytest.fixture
def tokens(sqlite_store: Store) -> dict[str, dict[str, str]]:
    return {role: {"Authorization": f"Bearer {sqlite_store.create_token(role, role, 't')[0]}"}
            for role in ROLES}


RESTRICT = {"properties": {"restrictOutboundNetworkAccess": "Enabled",
                           "allowedFqdnList": ["my-eventhub.servicebus.windows.net"]}}
# (method, path, body, roles allowed)
MATRIX = [
    ("GET", "/v1/clusters/default", None, {"admin", "operator", "viewer"}),
    ("GET", "/v1/clusters", None, {"admin", "operator", "viewer"}),
    ("PUT", "/v1/clusters/default", RESTRICT, {"admin", "operator"}),
    ("PATCH", "/v1/clusters/default", RESTRICT, {"admin", "operator"}),
    ("GET", "/v1/clusters/default/versions", None, {"admin", "operator", "viewer"}),
    ("POST", "/v1/clusters/default/rollback", {"version": 1}, {"admin", "operator"}),
    ("GET", "/v1/clusters/default/applicationRuleCollections", None,
     {"admin", "operator", "viewer"}),
    ("PUT", "/v1/clusters/default/networkRuleCollections/n1",
     {"priority": 100, "rules": [{"name": "r", "destinations": ["10.0.0.0/8"]}]},
     {"admin", "operator"}),
    ("POST", "/v1/check", {"url": "https://example.com/"}, {"admin", "operator", "viewer"}),
    ("POST", "/v1/mgmt", {"command": ".show cluster policy callout"},
     {"admin", "operator", "viewer"}),
    ("POST", "/v1/mgmt", {"command": ".delete cluster policy callout"}, {"admin", "operator"}),
    ("POST", "/v1/clusters/default/listCalloutPolicies", None,
     {"admin", "operator", "viewer"}),
    ("POST", "/v1/clusters/default/addCalloutPolicies", {"value": []}, {"admin", "operator"}),
    ("GET", "/v1/tokens", None, {"admin"}),
    ("POST", "/v1/tokens", {"name": "x", "role": "viewer"}, {"admin"}),
]


@pytest.mark.parametrize(("method", "path", "body", "allowed"), MATRIX)
def test_each_role_is_allowed_or_refused(client: TestClient, tokens: dict[str, dict[str, str]],
                                         method: str, path: str, body: object,
                                         allowed: set[str]) -> None:
    assert client.request(method, path, json=body).status_code == 401
    bad = {"Authorization": "Bearer egt_not-a-token"}
    assert client.request(method, path, json=body, headers=bad).status_code == 401
    for role in ROLES:
        status = client.request(method, path, json=body, headers=tokens[role]).status_code
        assert (status < 400) == (role in allowed), (role, status)
        if role not in allowed:
            assert status == 403


def test_health_and_metrics_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert "egressguard_decisions_total" in client.get("/metrics").text


@pytest.mark.parametrize(("value", "enabled"), [
    ("Enabled", True), ("Disabled", False), (True, True), (False, False),
    ("true", True), ("false", False)])
def test_restrict_outbound_accepts_arm_values(client: TestClient,
                                              tokens: dict[str, dict[str, str]],
                                              value: object, enabled: bool) -> None:
    body = {"properties": {"restrictOutboundNetworkAccess": value}}
    answer = client.patch("/v1/clusters/default", json=body, headers=tokens["operator"])
    assert answer.status_code == 200
    expected = "Enabled" if enabled else "Disabled"
    assert answer.json()["properties"]["restrictOutboundNetworkAccess"] == expected


def test_put_replaces_patch_merges_and_get_reads_back(client: TestClient,
                                                      tokens: dict[str, dict[str, str]]
                                                      ) -> None:
    op = tokens["operator"]
    put = client.put("/v1/clusters/default", json=RESTRICT, headers=op).json()
    assert put["properties"]["allowedFqdnList"] == ["my-eventhub.servicebus.windows.net"]
    assert put["systemData"]["lastModifiedBy"] == "operator"
    patched = client.patch("/v1/clusters/default", json={"properties": {
        "applicationRuleCollections": [{"name": "aks", "priority": 200, "rules": [
            {"name": "mcr", "targets": ["mcr.microsoft.com"], "protocols": ["https:443"]}]}]}},
        headers=op).json()["properties"]
    assert patched["allowedFqdnList"] == ["my-eventhub.servicebus.windows.net"]
    assert patched["applicationRuleCollections"][0]["rules"][0]["targets"] == [
        "mcr.microsoft.com"]
    got = client.get("/v1/clusters/default", headers=tokens["viewer"]).json()
    assert got["properties"] == patched
    replaced = client.put("/v1/clusters/default", json={"properties": {}}, headers=op).json()
    assert replaced["properties"]["restrictOutboundNetworkAccess"] == "Disabled"
    assert replaced["properties"]["applicationRuleCollections"] == []


def test_put_creates_a_new_cluster(client: TestClient, tokens: dict[str, dict[str, str]]
                                   ) -> None:
    answer = client.put("/v1/clusters/prod", json=RESTRICT, headers=tokens["operator"])
    assert answer.status_code == 200 and answer.json()["properties"]["version"] == 1
    assert client.patch("/v1/clusters/nope", json=RESTRICT,
                        headers=tokens["operator"]).status_code == 404


@pytest.mark.parametrize(("body", "target"), [
    ({"properties": {"allowedFqdnList": ["bad..name"]}}, "properties.allowedFqdnList"),
    ({"properties": {"allowedFqdnList": ["a.*.com"]}}, "properties.allowedFqdnList"),
    ({"properties": {"restrictOutboundNetworkAccess": "maybe"}},
     "properties.restrictOutboundNetworkAccess"),
    ({"properties": {"frobnicate": 1}}, "properties.frobnicate"),
    ({"sku": {"name": "S1", "colour": "red"}}, "sku.colour"),
    ({"sku": {"name": "S1", "capacity": -1}}, "sku.capacity"),
    ({"kind": "mainframe"}, "kind"),
    ({"type": "Microsoft.Storage/storageAccounts"}, "type"),
    ({"properties": {"calloutPolicies": [{"calloutType": "sql", "calloutUriRegex": "(a",
                                          "outboundAccess": "Allow"}]}},
     "properties.calloutPolicies[0].calloutUriRegex"),
    ({"properties": {"calloutPolicies": [{"calloutType": "sql", "calloutUriRegex": "a",
                                          "outboundAccess": "Maybe"}]}},
     "properties.calloutPolicies[0].outboundAccess"),
    ({"properties": {"applicationRuleCollections": [{"name": "c", "rules": [
        {"name": "r", "targets": ["x.<region>.example.com"]}]}]}},
     "properties.applicationRuleCollections[0].rules[0].targets"),
    ({"properties": {"networkRuleCollections": [{"name": "c", "priority": 5, "rules": []}]}},
     "properties.networkRuleCollections[0].priority"),
    ({"properties": {"restrictOutboundNetworkAccess": True,
                     "allowedFqdnList": ["a.example.com"],
                     "calloutPolicies": [{"calloutType": "sql", "calloutUriRegex": "a",
                                          "outboundAccess": "Allow"}]}},
     "properties.calloutPolicies"),
    ({"properties": {"serviceEndpointPolicies": [{"name": "s",
                                                  "aliases": ["/services/Azure/Nope"]}]}},
     ""),
])
def test_bad_input_is_422_naming_the_field_and_changes_nothing(
        client: TestClient, tokens: dict[str, dict[str, str]], body: object,
        target: str) -> None:
    for method in ("PUT", "PATCH"):
        answer = client.request(method, "/v1/clusters/default", json=body,
                                headers=tokens["operator"])
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error.get("target", "").startswith(target), error
        assert error["message"]
    assert client.get("/v1/clusters/default",
                      headers=tokens["viewer"]).json()["properties"]["version"] == 1


def test_malformed_json_is_refused_and_changes_nothing(client: TestClient,
                                                       tokens: dict[str, dict[str, str]]
                                                       ) -> None:
    headers = {**tokens["operator"], "content-type": "application/json"}
    answer = client.put("/v1/clusters/default", content=b'{"properties": {', headers=headers)
    assert answer.status_code in (400, 422)
    assert "error" in answer.json()
    assert client.get("/v1/clusters/default",
                      headers=tokens["viewer"]).json()["properties"]["version"] == 1


def test_rule_collection_crud(client: TestClient, tokens: dict[str, dict[str, str]]) -> None:
    op, base = tokens["operator"], "/v1/clusters/default/applicationRuleCollections"
    body = {"priority": 300, "action": "allow", "rules": [
        {"name": "ubuntu", "targets": [".ubuntu.com"], "protocols": ["http:80"]}]}
    created = client.put(f"{base}/os", json=body, headers=op)
    assert created.status_code == 200 and created.json()["name"] == "os"
    assert client.get(f"{base}/os", headers=tokens["viewer"]).json()["priority"] == 300
    body["priority"] = 400
    assert client.put(f"{base}/os", json=body, headers=op).json()["priority"] == 400
    assert [c["name"] for c in client.get(base, headers=op).json()["value"]] == ["os"]
    bad = client.put(f"{base}/os", json={"rules": [{"name": "r", "targets": ["*.*.com"]}]},
                     headers=op)
    assert bad.status_code == 422 and bad.json()["error"]["target"].startswith("rules[0]")
    assert client.delete(f"{base}/os", headers=op).json()["deleted"] == "os"
    assert client.get(f"{base}/os", headers=op).status_code == 404
    assert client.delete(f"{base}/os", headers=op).status_code == 404


def test_versions_diff_and_rollback(client: TestClient, tokens: dict[str, dict[str, str]]
                                    ) -> None:
    op = tokens["operator"]
    client.patch("/v1/clusters/default", json=RESTRICT, headers=op)
    versions = client.get("/v1/clusters/default/versions", headers=op).json()["value"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["principal"] == "operator"
    diff = client.get("/v1/clusters/default/versions/1/diff/2", headers=op).text
    assert "+- my-eventhub.servicebus.windows.net" in diff
    shown = client.get("/v1/clusters/default/versions/2", headers=op).json()
    assert "my-eventhub" in shown["policy"]
    rolled = client.post("/v1/clusters/default/rollback", json={"version": 1}, headers=op)
    assert rolled.json()["properties"]["version"] == 3
    assert rolled.json()["properties"]["allowedFqdnList"] == []
    assert client.post("/v1/clusters/default/rollback", json={"version": 9},
                       headers=op).status_code == 404


def test_mgmt_runs_commands_and_reports_errors(client: TestClient,
                                               tokens: dict[str, dict[str, str]]) -> None:
    op = tokens["operator"]
    shown = client.post("/v1/mgmt", json={"command": ".show cluster policy callout"},
                        headers=op).json()
    columns = [c["ColumnName"] for c in shown["Tables"][0]["Columns"]]
    assert columns == ["PolicyName", "EntityName", "Policy", "ChildEntities", "EntityType"]
    syntax = client.post("/v1/mgmt", json={"command": ".show cluster polcy callout"},
                         headers=op)
    assert syntax.status_code == 400
    assert syntax.json()["error"]["position"] == 14
    assert syntax.json()["error"]["expected"] == "'policy'"
    refused = client.post("/v1/mgmt", json={"command": ".alter cluster policy callout @'[]'"},
                          headers=op)
    assert refused.status_code == 409
    client.patch("/v1/clusters/default",
                 json={"properties": {"restrictOutboundNetworkAccess": "Disabled"}}, headers=op)
    bad = client.post("/v1/mgmt", json={"command": ".alter cluster policy callout @'[{'"},
                      headers=op)
    assert bad.status_code == 422 and bad.json()["error"]["target"] == "policy"
    ok = client.post("/v1/mgmt", json={"command": ".alter cluster policy callout @'[{\"Callout"
                     "Type\":\"sql\",\"CalloutUriRegex\":\"x\",\"CanCall\":true}]'"},
                     headers=op)
    assert ok.status_code == 200 and ok.json()["version"] == 3


def test_check_gives_the_same_answer_as_the_cli(client: TestClient, sqlite_store: Store,
                                                tokens: dict[str, dict[str, str]],
                                                tmp_path: Path) -> None:
    client.patch("/v1/clusters/default", json=RESTRICT, headers=tokens["operator"])
    cases = [{"url": "https://my-eventhub.servicebus.windows.net/"},
             {"url": "https://evil.example.net/x"},
             {"url": "https://adedicated.sql.azuresynapse.net", "type": "sql"}]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(sqlite_store.current("default").text)
    for n, case in enumerate(cases):
        answer = client.post("/v1/check", json=case, headers=tokens["viewer"])
        assert answer.status_code == 200 and answer.headers["X-Policy-Version"] == "2"
        if n < len(cases) - 1:  # the CLI starts slowly: run it for one case only
            continue
        args = [EGRESSGUARD, "check", case["url"], "--json", "--policy", str(policy_file),
                "--type", case["type"]]
        cli = subprocess.run(args, capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert answer.json() == json.loads(cli.stdout.strip().splitlines()[-1])
    assert [client.post("/v1/check", json=c, headers=tokens["viewer"]).json()["verdict"]
            for c in cases] == ["allow", "deny", "deny"]


def test_check_rejects_bad_addresses(client: TestClient, tokens: dict[str, dict[str, str]]
                                     ) -> None:
    answer = client.post("/v1/check", json={"url": "https://a.example/", "addresses": ["x"]},
                         headers=tokens["viewer"])
    assert answer.status_code == 422


def test_tokens_api_shows_the_token_once_and_revocation_works(
        client: TestClient, tokens: dict[str, dict[str, str]]) -> None:
    admin = tokens["admin"]
    created = client.post("/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=admin)
    assert created.status_code == 201
    token = created.json()["token"]
    listed = client.get("/v1/tokens", headers=admin).json()["value"]
    assert all("token" not in t and token not in json.dumps(t) for t in listed)
    viewer = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/clusters/default", headers=viewer).status_code == 200
    assert client.delete(f"/v1/tokens/{created.json()['id']}", headers=admin).status_code == 200
    assert client.get("/v1/clusters/default", headers=viewer).status_code == 401
    bad_role = client.post("/v1/tokens", json={"name": "x", "role": "root"}, headers=admin)
    assert bad_role.status_code == 422


async def test_allow_cidr_refuses_other_sources(sqlite_store: Store) -> None:
    token = sqlite_store.create_token("v", "viewer", "t")[0]
    app = create_app(sqlite_store, allow_cidrs=["127.0.0.0/8"])
    headers = {"Authorization": f"Bearer {token}"}
    for source, status in (("127.0.0.1", 200), ("10.1.2.3", 403), ("::ffff:127.0.0.1", 200)):
        transport = httpx.ASGITransport(app=app, client=(source, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            assert (await c.get("/v1/clusters/default", headers=headers)).status_code == status
            assert (await c.get("/healthz")).status_code == status


def test_api_against_postgresql(pg_url: str) -> None:
    store = Store(pg_url)
    token = store.create_token("op", "operator", "t")[0]
    with TestClient(create_app(store)) as c:
        headers = {"Authorization": f"Bearer {token}"}
        assert c.patch("/v1/clusters/default", json=RESTRICT, headers=headers).status_code == 200
        assert c.get("/v1/clusters/default/versions",
                     headers=headers).json()["value"][0]["principal"] == "op"
    store.close()


@pytest.mark.timeout(60)
def test_api_command_serves_on_loopback_and_prints_a_bootstrap_token(tmp_path: Path) -> None:
    env = {**os.environ, "EGRESSGUARD_HOME": str(tmp_path)}
    proc = subprocess.Popen([EGRESSGUARD, "api", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        token = ""
        for line in proc.stderr:
            if line.startswith("egt_"):
                token = line.strip()
                break
        assert token
        url = proc.stdout.readline().split(" on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        answer = httpx.get(f"{url}/v1/clusters/default",
                           headers={"Authorization": f"Bearer {token}"})
        assert answer.json()["properties"]["restrictOutboundNetworkAccess"] == "Enabled"
        assert httpx.get(f"{url}/openapi.json").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
