"""Replay rebuilds each recorded request's source from the client address as each point
records it: the gateway's peer with its port (IPv6 without brackets), the DNS filter's
bare address."""

from __future__ import annotations

import ipaddress

import pytest

from egressguard.analysis.replay import request_of


def record(kind: str, client: str) -> dict[str, object]:
    return {"kind": kind, "host": "v6.example", "port": 443, "client_address": client}


@pytest.mark.parametrize("client, source", [
    ("2001:db8::7:8080", "2001:db8::7"),        # the port is a valid last group
    ("2001:db8::7:51234", "2001:db8::7"),
    ("::1:8080", "::1"),
    ("2001:db8::5", "2001:db8::5"),             # no port: its head is no address
    ("[2001:db8::7]:8080", "2001:db8::7"),
    ("fe80::1%eth0:8080", "fe80::1"),           # a link-local peer with its zone
    ("192.0.2.9:8080", "192.0.2.9"),
])
def test_a_gateway_peer_is_its_address_without_the_port(client: str, source: str) -> None:
    for kind in ("connect", "http"):
        request = request_of(record(kind, client))
        assert request is not None and request.source == ipaddress.ip_address(source)


def test_a_dns_filter_client_is_a_bare_address_even_when_it_looks_like_one_with_a_port(
        ) -> None:
    request = request_of(record("dns", "2001:db8::7:8080"))
    assert request is not None and request.source == ipaddress.ip_address("2001:db8::7:8080")


def test_an_unparsable_client_is_skipped_not_guessed() -> None:
    assert request_of(record("connect", "2001:db8::7:port")) is None
    assert request_of(record("connect", "not-an-address:80")) is None
