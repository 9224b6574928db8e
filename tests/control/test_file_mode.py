"""The API of a gateway that enforces a policy file (`create_app(..., policy_file=...)`, what
`serve --policy F` builds): every read shows the file in force, every write is 409 and
stores nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from egressguard.control.api import create_app
from egressguard.control.inforce import FileBook
from egressguard.engine.holder import SnapshotHolder
from egressguard.source import PolicyFileWatcher, load_active
from egressguard.store import Store

pytestmark = pytest.mark.timeout(60)
FILE = """\
restrict_outbound_network_access: Enabled
allowed_fqdn_list: [{fqdn}]
callouts:
  - {{CalloutType: sql, CalloutUriRegex: 'db\\.example\\.net', CanCall: true}}
"""
REFUSAL = "this gateway enforces the policy file {path}; edit the file, or run serve " \
          "without --policy"
WRITES = [
    ("PUT", "/v1/clusters/default", {"properties": {}}),
    ("PUT", "/v1/clusters/new", {"properties": {}}),
    ("PUT", "/v1/clusters/default", {"properties": {"restrictOutboundNetworkAccess": 7}}),
    ("PATCH", "/v1/clusters/default", {"properties": {"allowedFqdnList": ["*"]}}),
    ("PUT", "/v1/clusters/default/networkRuleCollections/n",
     {"priority": 100, "rules": [{"name": "r", "destinations": ["0.0.0.0/0"]}]}),
    ("DELETE", "/v1/clusters/default/networkRuleCollections/n", None),
    ("PUT", "/v1/clusters/default/applicationRuleCollections/a",
     {"priority": 100, "rules": [{"name": "r", "targets": ["*"]}]}),
    ("DELETE", "/v1/clusters/default/applicationRuleCollections/a", None),
    ("POST", "/v1/clusters/default/rollback", {"version": 1}),
    ("POST", "/v1/mgmt", {"command": ".alter cluster policy callout @'[]'"}),
    ("POST", "/v1/mgmt", {"command": ".alter-merge cluster policy callout @'not json'"}),
    ("POST", "/v1/mgmt", {"command": ".delete cluster policy callout"}),
]


class FileApi:
    def __init__(self, store: Store, path: Path) -> None:
        self.store, self.path = store, path
        self.holder = SnapshotHolder(load_active(path))
        self.watcher = PolicyFileWatcher(path, self.holder)
        app = create_app(store, {"default": self.holder},
                         policy_file=FileBook(path, "default", self.holder))
        self.client = TestClient(app)
        self.tokens = {role: {"Authorization": "Bearer "
                              f"{store.create_token(role, role, 't')[0]}"}
                       for role in ("admin", "operator", "viewer", "auditor")}

    def edit(self, fqdn: str) -> None:
        self.path.write_text(FILE.format(fqdn=fqdn))
        assert self.watcher.reload()


@pytest.fixture
def api(store: Store, tmp_path: Path) -> Iterator[FileApi]:
    path = tmp_path / "policy.yaml"
    path.write_text(FILE.format(fqdn="api.example.com"))
    found = FileApi(store, path)
    with found.client:
        yield found


def test_every_policy_write_is_409_naming_the_file_and_stores_nothing(api: FileApi) -> None:
    before = [(v.number, v.text) for v in api.store.versions("default")]
    for role in ("admin", "operator"):
        for method, path, body in WRITES:
            answer = api.client.request(method, path, json=body, headers=api.tokens[role])
            assert answer.status_code == 409, (role, method, path, answer.text)
            assert answer.json()["error"] == {
                "code": "PolicyFromFile", "message": REFUSAL.format(path=api.path)}
    for method, path, body in WRITES:  # a role that may not write still hears 403
        answer = api.client.request(method, path, json=body, headers=api.tokens["viewer"])
        assert answer.status_code == 403, (method, path)
    assert [(v.number, v.text) for v in api.store.versions("default")] == before
    assert api.store.clusters() == ["default"]
    shown = api.client.get("/v1/clusters/default", headers=api.tokens["viewer"]).json()
    assert shown["properties"]["allowedFqdnList"] == ["api.example.com"]


def test_reads_show_the_file_in_force_and_follow_its_reloads(api: FileApi) -> None:
    viewer = api.tokens["viewer"]
    api.store.commit("default", api.store.current("default").policy.model_copy(
        update={"allowed_fqdn_list": ["store-only.example.com"]}), "op", "not in force")

    def check(url: str) -> tuple[str, str]:
        answer = api.client.post("/v1/check", json={"url": url}, headers=viewer)
        assert answer.status_code == 200, answer.text
        return answer.json()["verdict"], answer.headers["X-Policy-Version"]

    label = api.holder.active.version
    assert check("https://api.example.com/") == ("allow", label)
    assert check("https://store-only.example.com/")[0] == "deny"
    listed = api.client.get("/v1/clusters", headers=viewer).json()["value"]
    assert [c["name"] for c in listed] == ["default"]
    props = listed[0]["properties"]
    assert (props["version"], props["policyFileVersion"], props["allowedFqdnList"]) == (
        1, label, ["api.example.com"])
    other = api.client.get("/v1/clusters/prod", headers=viewer)
    assert other.status_code == 404 and str(api.path) in other.text
    shown = api.client.post("/v1/mgmt", json={"command": ".show cluster policy callout"},
                            headers=viewer).json()["Tables"][0]["Rows"]
    assert "db\\\\.example\\\\.net" in shown[1][2]
    analysed = api.client.post("/v1/analyze", json={"cluster": "default"}, headers=viewer)
    assert analysed.json()["policy"] == f"policy file {api.path}"
    simulated = api.client.post("/v1/simulate", json={"requests": [
        "https://api.example.com/"]}, headers=viewer).json()
    assert simulated["current"] == f"policy file {api.path}"
    assert simulated["results"][0]["current"]["verdict"] == "allow"
    page = api.client.get("/dashboard", headers=viewer).text
    assert "api.example.com" in page and "store-only.example.com" not in page

    api.edit("next.example.com")
    assert check("https://api.example.com/")[0] == "deny"
    assert check("https://next.example.com/") == ("allow", api.holder.active.version)
    props = api.client.get("/v1/clusters/default", headers=viewer).json()["properties"]
    assert (props["version"], props["allowedFqdnList"]) == (2, ["next.example.com"])
    versions = api.client.get("/v1/clusters/default/versions", headers=viewer).json()
    assert [v["version"] for v in versions["value"]] == [2]
    old = api.client.get("/v1/clusters/default/versions/1", headers=viewer)
    assert old.status_code == 404 and "earlier contents are not kept" in old.text
