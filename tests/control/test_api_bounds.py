"""The REST API validates with the policy model, so every bound of the model is a 422
there: a 300-character rule name (which used to reach the store and the audit columns)
is refused naming the field, and nothing changes. On SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from egressguard.control.api import create_app
from egressguard.store import Store

pytestmark = pytest.mark.timeout(60)
LONG = "r" * 300


@pytest.fixture
def api(store: Store) -> Iterator[tuple[TestClient, dict[str, str]]]:
    token = store.create_token("op", "operator", "t")[0]
    with TestClient(create_app(store)) as client:
        yield client, {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("body", "target"), [
    ({"properties": {"networkRuleCollections": [{"name": "c", "rules": [
        {"name": LONG, "destinations": ["10.0.0.0/8"]}]}]}},
     "properties.networkRuleCollections[0].rules[0].name"),
    ({"properties": {"applicationRuleCollections": [{"name": LONG, "rules": [
        {"name": "r", "targets": ["a.example"]}]}]}},
     "properties.applicationRuleCollections[0].name"),
    ({"properties": {"applicationRuleCollections": [{"name": "c", "rules": [
        {"name": "r", "targets": ["a.example"], "description": "d" * 5000}]}]}},
     "properties.applicationRuleCollections[0].rules[0].description"),
    ({"properties": {"calloutPolicies": [{"calloutType": "sql",
                                          "calloutUriRegex": "a" * 5000,
                                          "outboundAccess": "Allow"}]}},
     "properties.calloutPolicies[0].calloutUriRegex"),
    ({"properties": {"allowedFqdnList": ["a" * 300 + ".example"]}},
     "properties.allowedFqdnList[0]"),
])
def test_over_long_policy_strings_are_422_naming_the_field_and_change_nothing(
        api: tuple[TestClient, dict[str, str]], body: object, target: str) -> None:
    client, headers = api
    for method in ("PUT", "PATCH"):
        answer = client.request(method, "/v1/clusters/default", json=body, headers=headers)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error.get("target", "").startswith(target), error
        assert LONG not in answer.text
    version = client.get("/v1/clusters/default", headers=headers).json()["properties"]
    assert version["version"] == 1


def test_300_character_rule_name_in_a_collection_put_is_422(
        api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    answer = client.put("/v1/clusters/default/networkRuleCollections/n1", headers=headers,
                        json={"priority": 100, "rules": [
                            {"name": LONG, "destinations": ["10.0.0.0/8"]}]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["target"].startswith("rules[0].name")
    too_long_collection = client.put(f"/v1/clusters/default/networkRuleCollections/{LONG}",
                                     headers=headers, json={"priority": 100, "rules": []})
    assert too_long_collection.status_code == 422, too_long_collection.text


def test_trusted_ranges_and_match_resolved_names_round_trip_through_the_api(
        api: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = api
    body = {"properties": {"trustedRanges": ["10.0.0.0/8"], "networkRuleCollections": [
        {"name": "c", "rules": [{"name": "r", "destinations": ["20.0.0.0/8"],
                                 "matchResolvedNames": True}]}]}}
    assert client.patch("/v1/clusters/default", json=body, headers=headers).status_code == 200
    props = client.get("/v1/clusters/default", headers=headers).json()["properties"]
    assert props["trustedRanges"] == ["10.0.0.0/8"]
    assert props["networkRuleCollections"][0]["rules"][0]["matchResolvedNames"] is True
