"""The seeds' exact ARM, az and Kusto forms (issue 15, item 3): seed 001's PUT body, `az
resource update --set a=b c=d`, Kusto's triple-backtick `.alter`, the allowed-FQDN-list
versus callout-policies conflict in either order, SEM0056, and Data Explorer's callout
policy operations."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from egressguard.callout import CalloutDenied, Guard
from egressguard.cli.main import app
from egressguard.control.api import create_app
from egressguard.control.auth import Principal
from egressguard.control.mgmt import execute
from egressguard.store import Store

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()

# Seed 001, "Enabling the restriction", with its elided parts left out.
SEED_001_BODY = {
    "properties": {
        "restrictOutboundNetworkAccess": True,
        "allowedFqdnList": [
            "my-eventhub.servicebus.windows.net",
            "iothub-ns-built-in-endpoint-2917414-51ea2487eb.servicebus.windows.net",
        ],
    },
    "sku": {"name": "S1", "capacity": 1},
}
CALLOUT = {"calloutType": "sql", "calloutUriRegex": r"sqlname\.database\.azure\.com",
           "outboundAccess": "Allow"}


@pytest.fixture
def client(sqlite_store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_store)) as c:
        yield c


@pytest.fixture
def operator(sqlite_store: Store) -> dict[str, str]:
    return {"Authorization": f"Bearer {sqlite_store.create_token('op', 'operator', 't')[0]}"}


def test_seed_001_put_body_is_accepted_and_round_trips_booleans(
        client: TestClient, operator: dict[str, str]) -> None:
    answer = client.put("/v1/clusters/myhub", json=SEED_001_BODY, headers=operator)
    assert answer.status_code == 200, answer.text
    resource = client.get("/v1/clusters/myhub", headers=operator).json()
    assert resource["kind"] == "iothub"  # an IoT Hub SKU on a new cluster
    assert resource["sku"] == {"name": "S1", "capacity": 1}
    assert resource["properties"]["restrictOutboundNetworkAccess"] is True
    assert resource["properties"]["allowedFqdnList"] == SEED_001_BODY["properties"][
        "allowedFqdnList"]
    # What GET answered can be PUT back unchanged (read-only members included).
    again = client.put("/v1/clusters/myhub", json=resource, headers=operator).json()
    assert again["properties"]["restrictOutboundNetworkAccess"] is True
    assert again["kind"] == "iothub" and again["sku"] == resource["sku"]
    # PUT without kind keeps the cluster's kind; a boolean false stays a boolean.
    body = {"properties": {"restrictOutboundNetworkAccess": False}}
    off = client.put("/v1/clusters/myhub", json=body, headers=operator).json()
    assert off["kind"] == "iothub" and off["properties"]["restrictOutboundNetworkAccess"] is False


def test_data_explorer_clusters_answer_enabled_disabled(
        client: TestClient, operator: dict[str, str]) -> None:
    body = {"type": "Microsoft.Kusto/clusters",
            "properties": {"restrictOutboundNetworkAccess": True}}
    resource = client.put("/v1/clusters/adx", json=body, headers=operator).json()
    assert resource["kind"] == "dataexplorer"
    assert resource["properties"]["restrictOutboundNetworkAccess"] == "Enabled"
    # A generic cluster, too (the default), whatever form it was given.
    resource = client.put("/v1/clusters/plain", json={"properties": {
        "restrictOutboundNetworkAccess": True}}, headers=operator).json()
    assert resource["kind"] == "generic"
    assert resource["properties"]["restrictOutboundNetworkAccess"] == "Enabled"


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_az_set_takes_several_pairs_after_one_set(sqlite_url: str) -> None:
    # Seed 001's az command, as the shell hands it over (its double quotes removed).
    code, out = _cli("cluster", "update", "--store", sqlite_url, "--set",
                     "properties.restrictOutboundNetworkAccess=true",
                     "properties.allowedFqdnList=['my-eventhub.servicebus.windows.net',"
                     "'iothub-ns-built-in-endpoint-2917414-51ea2487eb.servicebus.windows.net']",
                     "-o", "json")
    assert code == 0, out
    props = json.loads(out)["properties"]
    assert props["restrictOutboundNetworkAccess"] == "Enabled"
    assert props["allowedFqdnList"] == [
        "my-eventhub.servicebus.windows.net",
        "iothub-ns-built-in-endpoint-2917414-51ea2487eb.servicebus.windows.net"]


@pytest.mark.parametrize(("args", "message"), [
    (("stray",), "pairs follow --set"),
    (("--set", "properties.reportOnly=true", "stray"), "expected properties.<name>=<value>"),
])
def test_stray_arguments_are_refused_in_one_line(sqlite_url: str, args: tuple[str, ...],
                                                 message: str) -> None:
    code, out = _cli("cluster", "update", "--store", sqlite_url, *args)
    assert code == 2 and message in out and "Traceback" not in out


def test_kusto_triple_backtick_alter(sqlite_store: Store) -> None:
    sqlite_store.commit("default", sqlite_store.current("default").policy.model_copy(
        update={"restrict_outbound_network_access": False}), "t", "open")
    text = """.alter cluster policy callout
```
[
  {"CalloutType": "sql", "CalloutUriRegex": "sqlname\\\\.database\\\\.azure\\\\.com",
   "CanCall": true}
]
```"""
    result = execute(sqlite_store, "default", text, Principal("t", "admin"))
    assert result.changed
    callouts = sqlite_store.current("default").policy.callouts
    assert [(c.callout_type, c.uri_regex) for c in callouts] == [
        ("sql", r"sqlname\.database\.azure\.com")]


def test_unclosed_triple_backtick_names_the_position(sqlite_store: Store) -> None:
    from egressguard.control.commands import CommandSyntaxError

    with pytest.raises(CommandSyntaxError, match="closing ```"):
        execute(sqlite_store, "default", ".alter cluster policy callout ```[]",
                Principal("t", "admin"))


def test_fqdn_list_then_callouts_is_refused(client: TestClient,
                                            operator: dict[str, str]) -> None:
    client.patch("/v1/clusters/default", json={"properties": {
        "restrictOutboundNetworkAccess": "Enabled", "allowedFqdnList": ["a.example.com"]}},
        headers=operator).raise_for_status()
    for answer in (
            client.patch("/v1/clusters/default", headers=operator,
                         json={"properties": {"calloutPolicies": [CALLOUT]}}),
            client.post("/v1/clusters/default/addCalloutPolicies", headers=operator,
                        json={"value": [CALLOUT]})):
        assert answer.status_code == 422
        assert "not both" in answer.json()["error"]["message"]
    assert client.get("/v1/clusters/default", headers=operator).json()[
        "properties"]["calloutPolicies"] == []


def test_callouts_then_fqdn_list_or_restriction_is_refused(
        client: TestClient, operator: dict[str, str]) -> None:
    client.patch("/v1/clusters/default", headers=operator, json={"properties": {
        "restrictOutboundNetworkAccess": "Disabled", "allowedFqdnList": ["a.example.com"]}}
                 ).raise_for_status()
    # Unrestricted, both may stand (the list means nothing yet) ...
    client.post("/v1/mgmt", headers=operator, json={
        "command": ".alter cluster policy callout @'[{\"CalloutType\": \"sql\", "
                   "\"CalloutUriRegex\": \"a\", \"CanCall\": true}]'"}).raise_for_status()
    # ... but restricting then would bring them together: refused, though neither is named.
    answer = client.patch("/v1/clusters/default", headers=operator, json={"properties": {
        "restrictOutboundNetworkAccess": "Enabled"}})
    assert answer.status_code == 422 and "not both" in answer.json()["error"]["message"]
    assert client.get("/v1/clusters/default", headers=operator).json()[
        "properties"]["restrictOutboundNetworkAccess"] == "Disabled"


def test_refused_callout_says_sem0056(sqlite_store: Store) -> None:
    with Guard.from_store(sqlite_store) as guard:
        decision = guard.check("webapi", "https://attacker.example/collect")
        assert not decision.allowed and decision.reason.endswith("(error SEM0056)")
        with pytest.raises(CalloutDenied) as info:
            guard.require("sql", "https://x.database.windows.net")
        assert "SEM0056" in str(info.value) and info.value.code == "SEM0056"


def test_callout_policy_operations_list_add_remove_by_id(
        client: TestClient, operator: dict[str, str]) -> None:
    client.patch("/v1/clusters/default", headers=operator, json={"properties": {
        "allowedFqdnList": []}}).raise_for_status()
    base = "/v1/clusters/default"
    assert client.post(f"{base}/listCalloutPolicies", headers=operator).json() == {
        "value": []}
    wild = {"calloutType": "kusto", "calloutUriRegex": ".*", "outboundAccess": "Deny"}
    added = client.post(f"{base}/addCalloutPolicies", headers=operator,
                        json={"value": [CALLOUT, wild]})
    assert added.status_code == 200, added.text
    ids = [e["calloutId"] for e in added.json()["value"]]
    assert ids == [r"sqlname\.database\.azure\.com_sql", ".*_kusto"]
    # The same id again replaces the entry (its access changes), it is not duplicated.
    client.post(f"{base}/addCalloutPolicies", headers=operator, json={
        "value": [{**wild, "outboundAccess": "Allow"}]}).raise_for_status()
    listed = client.post(f"{base}/listCalloutPolicies", headers=operator).json()["value"]
    assert [(e["calloutId"], e["outboundAccess"]) for e in listed] == [
        (r"sqlname\.database\.azure\.com_sql", "Allow"), (".*_kusto", "Allow")]
    removed = client.post(f"{base}/removeCalloutPolicy", headers=operator,
                          json={"calloutId": ".*_kusto"})
    assert [e["calloutId"] for e in removed.json()["value"]] == [
        r"sqlname\.database\.azure\.com_sql"]
    missing = client.post(f"{base}/removeCalloutPolicy", headers=operator,
                          json={"calloutId": ".*_kusto"})
    assert missing.status_code == 404
    bad = client.post(f"{base}/addCalloutPolicies", headers=operator, json={"value": [
        {"calloutType": "telnet", "calloutUriRegex": "a", "outboundAccess": "Allow"}]})
    assert bad.status_code == 422 and "unknown callout type" in bad.text
