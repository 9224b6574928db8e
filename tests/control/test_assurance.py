"""Assertions and ceilings gate every version write: the store's commit, PUT/PATCH,
Kusto commands and rollback; the ceiling routes are for admins only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from egressguard.analysis.contain import check_arguments
from egressguard.analysis.simulate import parse_requests
from egressguard.control.api import create_app
from egressguard.engine import compile_policy
from egressguard.policy import Policy, load_policy_text
from egressguard.store import Refused, Store

pytestmark = pytest.mark.timeout(60)

CEILING = load_policy_text("""
restrict_outbound_network_access: true
allowed_fqdn_list: ["*.github.com", pypi.org]
""", "ceiling")


def _policy(fqdns: list[str], assertions: str = "") -> Policy:
    return load_policy_text("restrict_outbound_network_access: true\n"
                            f"allowed_fqdn_list: {fqdns}\n{assertions}", "policy")


PYPI_MUST_WORK = """assertions:
- {request: "https://pypi.org/simple/", expect: allow, name: pypi-works}
- {request: "https://evil.example/", expect: deny, name: no-evil}
"""


def test_a_write_breaking_an_assertion_is_refused_naming_it(store: Store) -> None:
    before = store.current("default").number
    with pytest.raises(Refused) as caught:
        store.commit("default", _policy(["api.github.com"], PYPI_MUST_WORK), "t", "x")
    assert any("'pypi-works'" in line for line in caught.value.problems)
    assert not any("no-evil" in line for line in caught.value.problems)
    assert store.current("default").number == before
    ok = store.commit("default", _policy(["pypi.org"], PYPI_MUST_WORK), "t", "x")
    assert ok.number == before + 1


def test_a_write_beyond_the_ceiling_is_refused_with_a_counterexample(store: Store) -> None:
    store.set_ceiling("default", CEILING, "sec")
    wide = _policy(["pypi.org", "files.example.net"])
    with pytest.raises(Refused) as caught:
        store.commit("default", wide, "op", "widen")
    lines = [x for x in caught.value.problems if x.startswith("counterexample: ")]
    assert len(lines) == 1
    request = parse_requests(lines[0].removeprefix("counterexample: "))[0].request
    assert compile_policy(wide).decide(request).permitted
    assert not compile_policy(CEILING).decide(request).permitted
    assert store.commit("default", _policy(["api.github.com"]), "op", "narrow").number == 2


def test_rollback_to_a_version_beyond_the_ceiling_is_refused(store: Store) -> None:
    store.commit("default", _policy(["evil.example"]), "op", "wide")  # version 2
    store.commit("default", _policy(["pypi.org"]), "op", "narrow")  # version 3
    store.set_ceiling("default", CEILING, "sec")
    with pytest.raises(Refused, match=r"counterexample: .*evil\.example"):
        store.rollback("default", 2, "op")
    assert store.current("default").number == 3


def test_a_ceiling_the_policy_in_force_exceeds_is_refused(store: Store) -> None:
    store.commit("default", _policy(["evil.example"]), "op", "wide")
    with pytest.raises(Refused, match="not under this ceiling"):
        store.set_ceiling("default", CEILING, "sec")
    assert store.ceiling("default") is None


def test_a_strict_ceiling_refuses_what_cannot_be_proved(store: Store) -> None:
    callouts = """callouts:
- {callout_type: sql, uri_regex: '^https://a\\.example\\.com/(x|y)', can_call: true}
"""
    ceiling = load_policy_text(callouts.replace("(x|y)", "[xy]"), "ceiling")
    store.set_ceiling("default", ceiling, "sec", strict=False)
    policy = load_policy_text(callouts, "p")
    assert store.commit("default", policy, "op", "lenient").number == 2
    store.clear_ceiling("default")
    with pytest.raises(Refused, match="could not prove"):
        store.set_ceiling("default", ceiling, "sec", strict=True)


def test_deleting_a_cluster_removes_its_ceiling(store: Store) -> None:
    store.create_cluster("prod", _policy(["pypi.org"]), "t")
    store.set_ceiling("prod", CEILING, "sec")
    store.delete_cluster("prod")
    store.create_cluster("prod", _policy(["evil.example"]), "t")
    assert store.ceiling("prod") is None


# -- the API ---------------------------------------------------------------------------


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as c:
        yield c


def _auth(store: Store, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.create_token(role, role, 't')[0]}"}


def test_ceiling_routes_are_for_admins_only(client: TestClient, store: Store) -> None:
    body = {"policy_text": "restrict_outbound_network_access: true\n"}
    for role in ("operator", "viewer", "auditor"):
        headers = _auth(store, role)
        assert client.put("/v1/clusters/default/ceiling", json=body,
                          headers=headers).status_code == 403
        assert client.delete("/v1/clusters/default/ceiling",
                             headers=headers).status_code == 403
    admin = _auth(store, "admin")
    assert client.get("/v1/clusters/default/ceiling", headers=admin).status_code == 404
    assert client.put("/v1/clusters/default/ceiling", json=body,
                      headers=admin).status_code == 200
    shown = client.get("/v1/clusters/default/ceiling", headers=admin).json()
    assert shown["principal"] == "admin" and "restrict_outbound" in shown["policy"]
    assert client.delete("/v1/clusters/default/ceiling", headers=admin).json()["cleared"]


def test_api_writes_beyond_the_ceiling_are_422_with_a_counterexample(
        client: TestClient, store: Store) -> None:
    admin, op = _auth(store, "admin"), _auth(store, "operator")
    assert client.put("/v1/clusters/default/ceiling", json={
        "policy": {"restrict_outbound_network_access": True,
                   "allowed_fqdn_list": ["*.github.com"]}}, headers=admin).status_code == 200
    patch = client.patch("/v1/clusters/default", json={"properties": {
        "allowedFqdnList": ["api.github.com", "evil.example"]}}, headers=op)
    assert patch.status_code == 422
    message = patch.json()["error"]["message"]
    line = next(x for x in message.splitlines() if x.startswith("counterexample: "))
    assert "evil.example" in line
    assert check_arguments(line.removeprefix("counterexample: "))[0].find("evil") >= 0
    assert store.current("default").number == 1
    ok = client.patch("/v1/clusters/default", json={"properties": {
        "allowedFqdnList": ["api.github.com"]}}, headers=op)
    assert ok.status_code == 200


def test_a_kusto_command_beyond_the_ceiling_is_422_with_a_callout_counterexample(
        client: TestClient, store: Store) -> None:
    admin, op = _auth(store, "admin"), _auth(store, "operator")
    open_ = {"properties": {"restrictOutboundNetworkAccess": "Disabled"}}
    assert client.put("/v1/clusters/default", json=open_, headers=op).status_code == 200
    assert client.put("/v1/clusters/default/ceiling", json={"policy": {}},
                      headers=admin).status_code == 200
    kusto = client.post("/v1/mgmt", json={
        "command": ".alter cluster policy callout @'[{\"CalloutType\":\"sql\","
                   "\"CalloutUriRegex\":\"^https://x\\\\.evil\\\\.example/\","
                   "\"CanCall\":true}]'"}, headers=op)
    assert kusto.status_code == 422, kusto.text
    assert "counterexample: sql https://x.evil.example/" in kusto.json()["error"]["message"]
    assert store.current("default").number == 2


def test_api_writes_breaking_assertions_are_422_naming_them(
        client: TestClient, store: Store) -> None:
    op = _auth(store, "operator")
    body = {"properties": {"restrictOutboundNetworkAccess": "Enabled",
                           "allowedFqdnList": ["pypi.org"],
                           "assertions": [{"request": "https://pypi.org/", "expect": "allow",
                                           "name": "pypi-works"}]}}
    assert client.put("/v1/clusters/default", json=body, headers=op).status_code == 200
    got = client.get("/v1/clusters/default", headers=op).json()
    assert got["properties"]["assertions"][0]["name"] == "pypi-works"
    broken = client.patch("/v1/clusters/default", json={"properties": {
        "allowedFqdnList": []}}, headers=op)
    assert broken.status_code == 422
    assert "assertion 'pypi-works' failed" in broken.json()["error"]["message"]
    bad = client.patch("/v1/clusters/default", json={"properties": {
        "assertions": [{"request": "nonsense", "expect": "allow"}]}}, headers=op)
    assert bad.status_code == 422
    assert bad.json()["error"]["target"].startswith("properties.assertions[0]")


def test_replay_over_the_api_reports_flips_to_auditors_only(
        client: TestClient, store: Store, store_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import os
    import time

    from egressguard.audit.events import DecisionEvent
    from egressguard.audit.log import AuditLog

    monkeypatch.setenv("EGRESSGUARD_AUDIT_KEY", base64.b64encode(os.urandom(32)).decode())
    with AuditLog(store_url) as log:
        for host, permitted in (("pypi.org", True), ("pypi.org", True), ("evil.example", False)):
            log.emit(DecisionEvent(time=time.time(), cluster="default", kind="connect",
                                   host=host, port=443, verdict="allow" if permitted
                                   else "deny", permitted=permitted, layer="x", rule="r",
                                   reason="x", client_identity="ci-runner",
                                   client_address="10.1.2.3"))
        log.flush()
    body = {"policy": {"restrict_outbound_network_access": True,
                       "allowed_fqdn_list": ["evil.example"]}, "since": "1h"}
    assert client.post("/v1/replay", json=body,
                       headers=_auth(store, "operator")).status_code == 403
    got = client.post("/v1/replay", json=body, headers=_auth(store, "auditor"))
    assert got.status_code == 200, got.text
    data = got.json()
    assert data["decisions"] == 3
    assert data["newly_denied"] == [{"client": "ci-runner", "kind": "connect",
                                     "destination": "pypi.org:443", "requests": 2}]
    assert "newly allowed: 1 request from ci-runner to evil.example:443 (connect)" in \
        data["lines"]
    bad = client.post("/v1/replay", json={**body, "since": "yesterday-ish"},
                      headers=_auth(store, "auditor"))
    assert bad.status_code == 422


def test_a_proof_against_a_ceiling_changed_meanwhile_is_redone_in_the_transaction(
        store: Store) -> None:
    # commit() proves before taking the write lock; a ceiling set in between must be seen.
    wide = _policy(["evil.example"])
    from egressguard.policy import dump_policy

    store.set_ceiling("default", CEILING, "sec")
    with pytest.raises(Refused, match="counterexample: "):
        store._insert("default", dump_policy(wide), "op", "race", False, wide,
                      proved=(None, False))  # what commit() saw before the ceiling
    assert store.current("default").number == 1
