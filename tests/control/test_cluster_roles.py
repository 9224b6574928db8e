"""Roles per cluster: a token may be operator on one cluster and viewer on another, and
a grant never reaches past its cluster. One test per route class (policy resources,
what-if and commands, tokens, ceiling and replay, analysis, audit, dashboard), each
through the real app over a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from egressguard.control.api import create_app
from egressguard.policy import Policy
from egressguard.store import Invalid, Store

pytestmark = pytest.mark.timeout(60)
RESTRICT = {"properties": {"restrictOutboundNetworkAccess": "Enabled",
                           "allowedFqdnList": ["api.example.com"]}}
COLLECTION = {"priority": 100, "rules": [{"name": "r", "destinations": ["10.0.0.0/8"]}]}


def _bearer(store: Store, role: str, grants: dict[str, str]) -> dict[str, str]:
    token, _info = store.create_token(f"t-{role}-{len(grants)}", role, "test", grants=grants)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    for name in ("alpha", "beta"):
        sqlite_store.create_cluster(name, Policy(), "test")
    return sqlite_store


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as c:
        yield c


@pytest.fixture
def split(store: Store) -> dict[str, str]:
    """No cluster-wide role: operator on alpha, viewer on beta, nothing on default."""
    return _bearer(store, "none", {"alpha": "operator", "beta": "viewer"})


def test_operator_on_one_cluster_and_viewer_on_another(client: TestClient,
                                                       split: dict[str, str]) -> None:
    for name in ("alpha", "beta"):
        assert client.get(f"/v1/clusters/{name}", headers=split).status_code == 200
        assert client.get(f"/v1/clusters/{name}/versions", headers=split).status_code == 200
    assert client.patch("/v1/clusters/alpha", json=RESTRICT, headers=split).status_code == 200
    refused = client.patch("/v1/clusters/beta", json=RESTRICT, headers=split)
    assert refused.status_code == 403
    assert "on cluster 'beta'" in refused.json()["detail"]
    assert client.get("/v1/clusters/default", headers=split).status_code == 403
    assert client.patch("/v1/clusters/default", json=RESTRICT,
                        headers=split).status_code == 403
    # collections and rollback follow the same cluster
    base = "/v1/clusters/{}/networkRuleCollections/n1"
    assert client.put(base.format("alpha"), json=COLLECTION, headers=split).status_code == 200
    assert client.put(base.format("beta"), json=COLLECTION, headers=split).status_code == 403
    assert client.post("/v1/clusters/alpha/rollback", json={"version": 1},
                       headers=split).status_code == 200
    assert client.post("/v1/clusters/beta/rollback", json={"version": 1},
                       headers=split).status_code == 403
    # the refused writes left beta at version 1, with the author of the allowed ones known
    versions = client.get("/v1/clusters/beta/versions", headers=split).json()["value"]
    assert [v["version"] for v in versions] == [1]
    alpha = client.get("/v1/clusters/alpha/versions", headers=split).json()["value"]
    assert {v["principal"] for v in alpha if v["version"] > 1} == {"t-none-2"}


def test_cluster_list_shows_only_the_clusters_a_grant_reads(
        client: TestClient, split: dict[str, str], store: Store) -> None:
    listed = client.get("/v1/clusters", headers=split).json()["value"]
    assert sorted(r["name"] for r in listed) == ["alpha", "beta"]
    auditor_only = _bearer(store, "none", {"alpha": "auditor"})
    assert client.get("/v1/clusters", headers=auditor_only).status_code == 403
    wide = _bearer(store, "viewer", {})
    listed = client.get("/v1/clusters", headers=wide).json()["value"]
    assert sorted(r["name"] for r in listed) == ["alpha", "beta", "default"]


def test_grants_add_to_the_cluster_wide_role(client: TestClient, store: Store) -> None:
    viewer_plus = _bearer(store, "viewer", {"alpha": "operator"})
    assert client.patch("/v1/clusters/alpha", json=RESTRICT,
                        headers=viewer_plus).status_code == 200
    assert client.patch("/v1/clusters/beta", json=RESTRICT,
                        headers=viewer_plus).status_code == 403
    assert client.get("/v1/clusters/default", headers=viewer_plus).status_code == 200


def test_creating_a_cluster_needs_the_cluster_wide_role(client: TestClient,
                                                        store: Store) -> None:
    granted = _bearer(store, "none", {"gamma": "operator"})
    refused = client.put("/v1/clusters/gamma", json=RESTRICT, headers=granted)
    assert refused.status_code == 403
    assert "gamma" not in store.clusters()
    wide = _bearer(store, "operator", {})
    assert client.put("/v1/clusters/gamma", json=RESTRICT, headers=wide).status_code == 200


def test_check_and_mgmt_use_the_cluster_they_name(client: TestClient,
                                                  split: dict[str, str]) -> None:
    probe = {"url": "https://api.example.com/"}
    assert client.post("/v1/check", json={**probe, "cluster": "beta"},
                       headers=split).status_code == 200
    # no cluster named: the one this gateway serves (default), which split cannot read
    assert client.post("/v1/check", json=probe, headers=split).status_code == 403
    delete = ".delete cluster policy callout"
    assert client.post("/v1/mgmt", json={"command": delete, "cluster": "alpha"},
                       headers=split).status_code == 200
    refused = client.post("/v1/mgmt", json={"command": delete, "cluster": "beta"},
                          headers=split)
    assert refused.status_code == 403
    assert "cluster 'beta'" in refused.json()["error"]["message"]
    show = ".show cluster policy callout"
    assert client.post("/v1/mgmt", json={"command": show, "cluster": "beta"},
                       headers=split).status_code == 200
    assert client.post("/v1/mgmt", json={"command": show},
                       headers=split).status_code == 403


def test_token_management_stays_with_the_cluster_wide_admin(client: TestClient,
                                                            store: Store) -> None:
    cluster_admin = _bearer(store, "none", {"alpha": "admin"})
    assert client.get("/v1/tokens", headers=cluster_admin).status_code == 403
    made = client.post("/v1/tokens", json={"name": "x", "role": "admin"},
                       headers=cluster_admin)
    assert made.status_code == 403
    assert "grants on one cluster do not count" in made.json()["detail"]
    admin = _bearer(store, "admin", {})
    made = client.post("/v1/tokens", json={"name": "x", "role": "none",
                                           "grants": {"alpha": "viewer"}}, headers=admin)
    assert made.status_code == 201
    assert made.json()["grants"] == {"alpha": "viewer"}
    listed = {t["name"]: t for t in client.get("/v1/tokens", headers=admin).json()["value"]}
    assert listed["x"]["grants"] == {"alpha": "viewer"} and listed["x"]["expires_at"]
    bad = client.post("/v1/tokens", json={"name": "y", "role": "none",
                                          "grants": {"alpha": "root"}}, headers=admin)
    assert bad.status_code == 422 and "unknown role" in bad.json()["error"]["message"]


def test_ceiling_needs_admin_on_that_cluster(client: TestClient, store: Store) -> None:
    cluster_admin = _bearer(store, "none", {"alpha": "admin", "beta": "operator"})
    # a cluster admin also passes the lesser roles on its cluster
    assert client.patch("/v1/clusters/alpha", json=RESTRICT,
                        headers=cluster_admin).status_code == 200
    body = {"policy_text": "restrict_outbound_network_access: true\n"
                           "allowed_fqdn_list: [api.example.com]\n"}
    assert client.put("/v1/clusters/alpha/ceiling", json=body,
                      headers=cluster_admin).status_code == 200
    assert client.put("/v1/clusters/beta/ceiling", json=body,
                      headers=cluster_admin).status_code == 403
    assert store.ceiling("beta") is None
    assert client.get("/v1/clusters/alpha/ceiling", headers=cluster_admin).status_code == 200


def test_replay_and_audit_read_only_the_granted_cluster(client: TestClient,
                                                        store: Store) -> None:
    auditor = _bearer(store, "none", {"alpha": "auditor"})
    assert client.get("/v1/audit", params={"cluster": "alpha"},
                      headers=auditor).status_code == 200
    assert client.get("/v1/audit", params={"cluster": "beta"},
                      headers=auditor).status_code == 403
    assert client.get("/v1/audit", headers=auditor).status_code == 403  # every cluster
    assert client.get("/v1/audit/verify", headers=auditor).status_code == 403
    candidate = {"policy_text": "restrict_outbound_network_access: true\n"}
    assert client.post("/v1/replay", json={**candidate, "cluster": "alpha"},
                       headers=auditor).status_code == 200
    assert client.post("/v1/replay", json=candidate, headers=auditor).status_code == 403
    wide = _bearer(store, "auditor", {})
    assert client.get("/v1/audit", headers=wide).status_code == 200


def test_analysis_reads_a_stored_cluster_only_with_a_role_on_it(
        client: TestClient, split: dict[str, str]) -> None:
    posted = {"policy_text": "restrict_outbound_network_access: true\n"}
    assert client.post("/v1/analyze", json=posted, headers=split).status_code == 200
    assert client.post("/v1/analyze", json={"cluster": "beta"},
                       headers=split).status_code == 200
    assert client.post("/v1/analyze", json={"cluster": "default"},
                       headers=split).status_code == 403
    requests = {"requests": ["https://api.example.com/"]}
    assert client.post("/v1/simulate", json={**requests, "cluster": "alpha"},
                       headers=split).status_code == 200
    assert client.post("/v1/simulate", json=requests, headers=split).status_code == 403


def test_dashboard_panels_follow_the_cluster_shown(client: TestClient,
                                                   split: dict[str, str]) -> None:
    page = client.get("/dashboard", params={"cluster": "alpha"}, headers=split)
    policy_refused = "(needs viewer, operator or admin)"
    assert page.status_code == 200 and policy_refused not in page.text
    other = client.get("/dashboard", params={"cluster": "default"}, headers=split)
    assert other.status_code == 200 and policy_refused in other.text
    assert client.get("/dashboard/versions/1", params={"cluster": "beta"},
                      headers=split).status_code == 200
    assert client.get("/dashboard/versions/1", params={"cluster": "default"},
                      headers=split).status_code == 403
    # decisions: operators (alpha), not viewers (beta)
    assert client.get("/dashboard/series", params={"cluster": "alpha"},
                      headers=split).status_code == 200
    assert client.get("/dashboard/series", params={"cluster": "beta"},
                      headers=split).status_code == 403
    assert client.get("/dashboard/propose", params={"host": "x.example.com",
                                                    "cluster": "beta"},
                      headers=split).status_code == 403


def test_a_dashboard_session_keeps_the_grants(client: TestClient, store: Store) -> None:
    token, _ = store.create_token("s", "none", "test", grants={"alpha": "viewer"})
    opened = store.open_session(token)
    assert not isinstance(opened, type(None))
    session_id, who = opened  # type: ignore[misc]
    assert who.grants == (("alpha", "viewer"),)
    cookies = {"egressguard_session": session_id}
    client.cookies.update(cookies)
    assert client.get("/dashboard/versions/1", params={"cluster": "alpha"}).status_code == 200
    assert client.get("/dashboard/versions/1", params={"cluster": "beta"}).status_code == 403


def test_rotation_keeps_the_grants_and_bad_grants_are_refused(store: Store) -> None:
    store.create_token("r", "viewer", "test", grants=["alpha=operator"])
    _token, info = store.rotate_token("r", "test")
    assert info.grants == (("alpha", "operator"),)
    assert [t.grants for t in store.tokens() if t.name == "r"] == [(("alpha", "operator"),)]
    for grants, reason in ((["alpha"], "unknown role"), (["Bad_Name=viewer"], "invalid"),
                           (["alpha=viewer", "alpha=operator"], "twice")):
        with pytest.raises(Invalid, match=reason):
            store.create_token("bad", "viewer", "test", grants=grants)
    with pytest.raises(Invalid, match="needs at least one grant"):
        store.create_token("bad", "none", "test")
