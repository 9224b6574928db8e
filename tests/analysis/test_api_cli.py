"""`egressguard analyze` and the REST routes `POST /v1/analyze`, `POST /v1/simulate`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from egressguard.cli.main import app
from egressguard.policy import load_policy
from egressguard.policy.load import policy_to_data

DATA = Path(__file__).parent / "data"
runner = CliRunner()
LEAKY = """
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: storage
    priority: 200
    rules: [{name: blob, targets: ['*.blob.core.windows.net'], protocols: ['https:443']}]
"""


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EGRESSGUARD_STORE", raising=False)


def test_analyze_json_lists_findings_and_fail_on_sets_exit_code(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(LEAKY)
    result = runner.invoke(app, ["analyze", "--policy", str(policy), "--output", "json"])
    data = json.loads(result.stdout)
    assert result.exit_code == 0
    assert [(f["check"], f["severity"], f["rule"]) for f in data["findings"]] == [
        ("wildcard-storage", "high", "application:storage/blob"),
        ("storage-without-sep", "high", "application:storage/blob")]
    assert data["summary"]["high"] == 2
    failing = runner.invoke(app, ["analyze", "--policy", str(policy), "--fail-on", "high"])
    assert failing.exit_code == 1
    assert "wildcard-storage" in failing.stdout and "exfil0probe.blob.core.windows.net" in \
        failing.stdout
    assert runner.invoke(app, ["analyze", "--policy", str(policy), "--fail-on",
                               "critical"]).exit_code == 0


def test_analyze_bad_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("application_rule_collections: [{name: a, rules: [{name: r, targets: "
                   "['a.*.com']}]}]\n")
    result = runner.invoke(app, ["analyze", "--policy", str(bad)])
    assert result.exit_code == 2 and "leftmost label" in result.stderr
    both = runner.invoke(app, ["analyze", "--policy", str(bad), "--cluster", "x"])
    assert both.exit_code == 2
    assert runner.invoke(app, ["analyze", "--fail-on", "dire"]).exit_code == 2


def test_analyze_reads_a_stored_cluster(tmp_path: Path) -> None:
    from egressguard.policy import load_policy_text
    from egressguard.store import Store

    url = f"sqlite:///{tmp_path / 's.db'}"
    with Store(url) as store:
        store.ensure_cluster("prod", load_policy_text(LEAKY), "test", "seed")
    result = runner.invoke(app, ["analyze", "--cluster", "prod", "--store", url, "-o", "json"])
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["policy"].startswith("cluster prod version")
    assert data["findings"][0]["check"] == "wildcard-storage"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    from egressguard.control.api import create_app
    from egressguard.policy import load_policy_text
    from egressguard.store import Store

    store = Store(f"sqlite:///{tmp_path / 'api.db'}")
    store.ensure_cluster("prod", load_policy_text(LEAKY), "test", "seed")
    viewer, _ = store.create_token("v", "viewer", "test")
    auditor, _ = store.create_token("a", "auditor", "test")
    with TestClient(create_app(store)) as client:
        yield (client, {"Authorization": f"Bearer {viewer}"},
               {"Authorization": f"Bearer {auditor}"})
    store.close()


def test_api_analyze_a_document_or_a_cluster(api: tuple[TestClient, dict[str, str],
                                                        dict[str, str]]) -> None:
    client, viewer, _ = api
    by_cluster = client.post("/v1/analyze", json={"cluster": "prod"}, headers=viewer)
    assert by_cluster.status_code == 200, by_cluster.text
    assert [f["check"] for f in by_cluster.json()["findings"]] == [
        "wildcard-storage", "storage-without-sep"]
    document = policy_to_data(load_policy(DATA / "proposed.yaml"))
    by_doc = client.post("/v1/analyze", json={"policy": document}, headers=viewer)
    assert by_doc.status_code == 200
    assert {(f["check"], f["severity"]) for f in by_doc.json()["findings"]} == {
        ("wildcard-storage", "info")}
    by_text = client.post("/v1/analyze", json={"policy_text": "allowed_fqdn_list: ['*']"},
                          headers=viewer)
    assert by_text.json()["findings"][0]["check"] == "any-host"


def test_api_rejects_bad_bodies_and_wrong_roles(api: tuple[TestClient, dict[str, str],
                                                           dict[str, str]]) -> None:
    client, viewer, auditor = api
    assert client.post("/v1/analyze", json={"cluster": "prod"}).status_code == 401
    assert client.post("/v1/analyze", json={"cluster": "prod"},
                       headers=auditor).status_code == 403
    assert client.post("/v1/analyze", json={}, headers=viewer).status_code == 422
    assert client.post("/v1/analyze", json={"cluster": "nope"},
                       headers=viewer).status_code == 404
    bad = client.post("/v1/analyze", json={"policy_text": "restrict_outbound_network_access: "
                                           "maybe"}, headers=viewer)
    assert bad.status_code == 422 and "restrict_outbound_network_access" in bad.text
    lines = client.post("/v1/simulate", json={"requests": ["nonsense"]}, headers=viewer)
    assert lines.status_code == 422 and "line" in lines.text


def test_api_simulate_against_the_stored_cluster(api: tuple[TestClient, dict[str, str],
                                                            dict[str, str]]) -> None:
    client, viewer, _ = api
    proposed = policy_to_data(load_policy(DATA / "proposed.yaml"))
    answer = client.post("/v1/simulate", headers=viewer, json={
        "cluster": "prod", "policy": proposed,
        "requests": ["https://mystore.blob.core.windows.net/", "# comment",
                     "https://evil.blob.core.windows.net/"]})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["current"].startswith("cluster prod version")
    assert [(r["line"], r["change"]) for r in data["results"]] == [
        (1, "none"), (3, "allow -> deny")]
    assert data["results"][1]["proposed"]["layer"] == "service_endpoint"
