"""IoT Hub routes and endpoints (issue 15, item 2): destinations derived from the endpoint,
`cluster update --set properties.restrictOutboundNetworkAccess=true --what-if` listing the
routes that would stop working before anything changes, and endpoint health from the
decisions a running gateway recorded, in the CLI and the API."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from egressguard.cli.main import app
from egressguard.control.api import create_app
from egressguard.engine.routes import checks, destination, health, stops_working
from egressguard.policy import PolicyError, load_policy_text
from egressguard.source import snapshot_for
from egressguard.store import Store
from tests.audit.conftest import audit_key
from tests.audit.test_gateway_audit import Proxy, proxy_factory
from tests.web.conftest import Sections

__all__ = ["audit_key", "proxy_factory"]
pytestmark = pytest.mark.timeout(60)
runner = CliRunner()
BUILTIN = "iothub-ns-built-in-endpoint-2917414-51ea2487eb.servicebus.windows.net"
HUB = """
kind: iothub
restrict_outbound_network_access: false
endpoints:
  - {name: telemetry, type: eventhub, host: my-eventhub.servicebus.windows.net,
     entity: telemetry}
  - {name: alerts, type: servicebus_queue, host: alerts.servicebus.windows.net,
     protocol: amqp_websockets}
  - {name: archive, type: storage_container, host: archive.blob.core.windows.net,
     entity: raw}
  - {name: events, type: builtin, host: BUILTIN, protocol: kafka}
  - {name: uploads, type: file_upload, host: uploads.blob.core.windows.net}
routes:
  - {name: to-telemetry, endpoint: telemetry}
  - {name: to-alerts, endpoint: alerts, source: DeviceLifecycleEvents}
  - {name: to-archive, endpoint: archive}
  - {name: to-events, endpoint: events}
  - {name: paused, endpoint: archive, enabled: false}
""".replace("BUILTIN", BUILTIN)


def test_destinations_are_derived_from_type_and_protocol() -> None:
    policy = load_policy_text(HUB)
    assert [destination(e) for e in policy.endpoints] == [
        ("my-eventhub.servicebus.windows.net", 5671),  # AMQP, an Event Hub's default
        ("alerts.servicebus.windows.net", 443),  # AMQP over WebSockets
        ("archive.blob.core.windows.net", 443),  # storage: HTTPS
        (BUILTIN, 9093),  # Kafka
        ("uploads.blob.core.windows.net", 443)]
    assert all(c.works for c in checks(policy, snapshot_for(policy)))


@pytest.mark.parametrize(("text", "message"), [
    ("endpoints: [{name: s, type: storage_container, host: a.blob.core.windows.net, "
     "protocol: amqp}]", "takes https"),
    ("endpoints: [{name: s, type: eventhub, host: '*.servicebus.windows.net'}]",
     "one name"),
    ("routes: [{name: r, endpoint: nowhere}]", "no endpoint named 'nowhere'"),
    ("endpoints: [{name: s, type: teapot, host: a.example.com}]", "type"),
])
def test_bad_endpoints_and_routes_do_not_load(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy_text(text)


def test_restricting_lists_the_routes_that_stop_working() -> None:
    before = load_policy_text(HUB)
    after = before.model_copy(update={"restrict_outbound_network_access": True,
                                      "allowed_fqdn_list": ["my-eventhub.servicebus.windows.net"]})
    lost = stops_working(before, snapshot_for(before), snapshot_for(after), after)
    # The built-in endpoint is not exempt (seed 001): it stops too; a disabled route is
    # not listed, file upload is.
    assert [c.route for c in lost] == ["to-alerts", "to-archive", "to-events", "file upload"]
    assert all(c.decision.rule == "default" for c in lost)


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_what_if_lists_before_anything_changes(sqlite_url: str) -> None:
    with Store(sqlite_url) as st:
        st.create_cluster("hub", load_policy_text(HUB), "t", "hub")
    code, out = _cli("cluster", "update", "-n", "hub", "--store", sqlite_url, "--set",
                     "properties.restrictOutboundNetworkAccess=true",
                     f"properties.allowedFqdnList=['my-eventhub.servicebus.windows.net',"
                     f"'{BUILTIN}']", "--what-if", "-o", "json")
    assert code == 0, out
    result = json.loads(out)
    assert [c["route"] for c in result["stopsWorking"]] == [
        "to-alerts", "to-archive", "file upload"]
    assert result["stopsWorking"][0]["destination"] == "alerts.servicebus.windows.net:443"
    code, out = _cli("cluster", "update", "-n", "hub", "--store", sqlite_url, "--set",
                     "properties.restrictOutboundNetworkAccess=true", "--what-if")
    assert code == 0 and "to-telemetry" in out and "would stop working" in out
    with Store(sqlite_url) as st:  # nothing changed
        assert st.current("hub").number == 1
        assert not st.current("hub").policy.restrict_outbound_network_access


def test_api_what_if_and_arm_round_trip(sqlite_store: Store) -> None:
    sqlite_store.create_cluster("hub", load_policy_text(HUB), "t", "hub")
    token = sqlite_store.create_token("v", "viewer", "t")[0]
    with TestClient(create_app(sqlite_store)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        resource = client.get("/v1/clusters/hub", headers=headers).json()
        assert resource["properties"]["endpoints"][0]["name"] == "telemetry"
        assert resource["properties"]["routes"][1]["source"] == "DeviceLifecycleEvents"
        answer = client.post("/v1/clusters/hub/whatIf", headers=headers, json={
            "properties": {"restrictOutboundNetworkAccess": True, "allowedFqdnList": []}})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["stopsWorking"]) == 5
        assert sqlite_store.current("hub").number == 1


def test_health_states_from_observed_outcomes() -> None:
    assert health([]) == "unknown"
    assert health([True, True]) == "healthy"
    assert health([False, False]) == "dead"
    assert health([True, False]) == "unhealthy"
    assert health([False, True]) == "degraded"


def _tunnel(proxy: Proxy, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(200)


GATEWAY_HUB = """
kind: iothub
restrict_outbound_network_access: true
trusted_ranges: [127.0.0.0/8]
allowed_fqdn_list: [good.servicebus.windows.net]
endpoints:
  - {name: good, type: eventhub, host: good.servicebus.windows.net}
  - {name: bad, type: eventhub, host: bad.servicebus.windows.net}
  - {name: flaky, type: eventhub, host: flaky.servicebus.windows.net}
  - {name: quiet, type: eventhub, host: quiet.servicebus.windows.net}
routes:
  - {name: r-good, endpoint: good}
  - {name: r-bad, endpoint: bad}
  - {name: r-flaky, endpoint: flaky}
"""


def test_endpoint_health_from_a_running_gateway(
        proxy_factory: Callable[..., Proxy], sqlite_url: str) -> None:
    proxy = proxy_factory(GATEWAY_HUB)
    assert not _tunnel(proxy, "good.servicebus.windows.net:5671").startswith(b"HTTP/1.1 403")
    assert _tunnel(proxy, "bad.servicebus.windows.net:5671").startswith(b"HTTP/1.1 403")
    assert _tunnel(proxy, "bad.servicebus.windows.net:5671").startswith(b"HTTP/1.1 403")
    assert _tunnel(proxy, "flaky.servicebus.windows.net:5671").startswith(b"HTTP/1.1 403")
    # The operator lets flaky through: its newest decision is an allow after a refusal.
    proxy.policy.write_text(GATEWAY_HUB.replace(
        "[good.servicebus.windows.net]",
        "[good.servicebus.windows.net, flaky.servicebus.windows.net]"))
    assert proxy.watcher.reload()
    assert not _tunnel(proxy, "flaky.servicebus.windows.net:5671").startswith(
        b"HTTP/1.1 403")
    proxy.log.flush()
    # The gateway records under its cluster (default): ask about that one.
    with Store(sqlite_url) as st:
        st.commit("default", load_policy_text(GATEWAY_HUB), "t", "hub policy")
    deadline = time.monotonic() + 10
    while True:
        code, out = _cli("cluster", "endpoints", "--store", sqlite_url, "-o", "json")
        assert code == 0, out
        rows = {r["name"]: r["health"] for r in json.loads(out)}
        if rows["good"] != "unknown" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == {"good": "healthy", "bad": "dead", "flaky": "degraded", "quiet": "unknown"}
    with Store(sqlite_url) as st:
        token = st.create_token("v", "viewer", "t")[0]
        with TestClient(create_app(st)) as client:
            answer = client.get("/v1/clusters/default/endpoints?window=1h",
                                headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert {r["name"]: r["health"] for r in answer.json()["value"]} == rows
            assert client.get("/v1/clusters/default/endpoints?window=soon", headers={
                "Authorization": f"Bearer {token}"}).status_code == 422
            operator = st.create_token("o", "operator", "t")[0]
            page = client.get("/dashboard", params={"cluster": "default"},
                              headers={"Authorization": f"Bearer {operator}"})
            assert page.status_code == 200
            shown = Sections(page.text).rows["endpoints"][1:]
            assert {r[0]: r[4] for r in shown} == rows
            assert shown[0][2] == "good.servicebus.windows.net:5671"
