"""What the allowed-FQDN list opens per cluster kind (issue 15, item 2; semantics §4
step 6): IoT Hub its endpoint protocols and no callouts, Data Explorer and generic
clusters HTTP/HTTPS 80/443 and callouts."""

from __future__ import annotations

import pytest

from egressguard.engine import Kind, Request, Snapshot
from tests.engine.helpers import callout, connect, snapshot, url

HUB = "my-eventhub.servicebus.windows.net"


def _policy(kind: str) -> Snapshot:
    return snapshot(f"""
        kind: {kind}
        restrict_outbound_network_access: true
        allowed_fqdn_list: [{HUB}]
    """)


def _flow(snap: Snapshot, host: str, port: int, protocol: str = "tcp") -> bool:
    return snap.decide(Request(kind=Kind.FLOW, host=host, port=port,
                               protocol=protocol)).allowed


@pytest.mark.parametrize("port", [443, 5671, 9093])
def test_iothub_list_opens_amqp_kafka_and_https(port: int) -> None:
    snap = _policy("iothub")
    assert connect(snap, HUB, port).allowed
    assert _flow(snap, HUB, port)


def test_iothub_list_opens_nothing_else() -> None:
    snap = _policy("iothub")
    assert not url(snap, f"http://{HUB}/").allowed  # plain HTTP is no IoT Hub egress
    assert not connect(snap, HUB, 80).allowed
    assert not connect(snap, HUB, 22).allowed
    assert not _flow(snap, HUB, 5671, "udp")
    assert not connect(snap, "other.servicebus.windows.net", 5671).allowed
    assert not callout(snap, f"https://{HUB}", "sql").allowed  # IoT Hub makes no callouts
    assert url(snap, f"https://{HUB}/").allowed


@pytest.mark.parametrize("kind", ["generic", "dataexplorer"])
def test_data_explorer_and_generic_lists_open_80_443_and_callouts(kind: str) -> None:
    snap = _policy(kind)
    assert url(snap, f"http://{HUB}/").allowed and connect(snap, HUB, 443).allowed
    assert not connect(snap, HUB, 5671).allowed and not _flow(snap, HUB, 5671)
    assert callout(snap, f"https://{HUB}", "sql").allowed
    assert not callout(snap, f"https://{HUB}", "webapi").allowed


def test_unknown_kind_does_not_load() -> None:
    from egressguard.policy import PolicyError

    with pytest.raises(PolicyError, match="kind"):
        snapshot("kind: mainframe")
