"""Spec section 4 steps 2 and 4: the address guard and network rules."""

from __future__ import annotations

import ipaddress

import pytest

from egressguard.engine import CompileError, Kind, Layer, References, Request, Verdict
from egressguard.engine.guard import special_range
from tests.engine.helpers import connect, flow, snapshot, url


@pytest.mark.parametrize(("address", "label"), [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "cgnat"), ("100.127.255.254", "cgnat"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"), ("2001:db8::5", "documentation"),
    ("198.18.0.1", "benchmark"), ("2001:2::1", "benchmark"),
    ("fd00::1", "unique-local"), ("fc00::1", "unique-local"),
    ("::ffff:10.0.0.1", "private"),            # IPv4-mapped
    ("::10.0.0.1", "private"),                 # IPv4-compatible
    ("64:ff9b::a9fe:a9fe", "link-local"),      # NAT64 of the metadata address
    ("2002:a9fe:a9fe::1", "link-local"),       # 6to4 of the metadata address
])
def test_special_ranges_are_classified(address: str, label: str) -> None:
    assert special_range(ipaddress.ip_address(address)) == label


@pytest.mark.parametrize("address", ["8.8.8.8", "20.1.2.3", "2606:4700::1111",
                                     "172.32.0.1", "100.128.0.1"])
def test_public_addresses_are_not_special(address: str) -> None:
    assert special_range(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.5", "127.0.0.1",
                                     "::ffff:127.0.0.1", "fd12::1", "100.100.100.200"])
def test_resolved_private_address_is_denied_even_for_an_allowed_name(address: str) -> None:
    # DNS rebinding: the name is allowed, the address it resolved to is not.
    snap = snapshot("""
        application_rule_collections:
          - name: c
            rules: [{name: r, targets: [api.partner.example]}]
        """)
    decision = connect(snap, "api.partner.example", 443, address)
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.GUARD)


def test_metadata_address_among_resolved_addresses_is_denied_even_after_a_public_one() -> None:
    decision = connect(snapshot(), "multi.example", 443, "8.8.8.8", "169.254.169.254")
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "guard:link-local")


def test_ip_literal_host_is_guarded_without_addresses() -> None:
    assert connect(snapshot(), "0x7f.1", 80).rule == "guard:loopback"
    assert url(snapshot(), "http://[::ffff:a9fe:a9fe]/").rule == "guard:link-local"


def test_explicit_cidr_network_rule_lifts_the_guard() -> None:
    snap = snapshot("""
        network_rule_collections:
          - name: internal
            rules:
              - {name: db, destinations: [10.20.0.0/16], protocols: [TCP], ports: ['5432']}
        """)
    allowed = flow(snap, "10.20.1.5", 5432)
    assert (allowed.verdict, allowed.layer, allowed.rule) == (
        Verdict.ALLOW, Layer.NETWORK, "network:internal/db")
    # Only for what the rule names: another port, protocol or range stays guarded.
    assert flow(snap, "10.20.1.5", 22).layer is Layer.GUARD
    assert flow(snap, "10.20.1.5", 5432, "udp").layer is Layer.GUARD
    assert flow(snap, "10.21.0.1", 5432).layer is Layer.GUARD


def test_star_network_rule_does_not_lift_the_guard() -> None:
    snap = snapshot("""
        network_rule_collections:
          - name: everything
            rules: [{name: all, destinations: ['*'], protocols: [Any]}]
        """)
    assert flow(snap, "169.254.169.254", 80).layer is Layer.GUARD
    assert flow(snap, "8.8.8.8", 53, "udp").layer is Layer.NETWORK


def test_zero_prefix_cidr_is_star_and_does_not_lift_the_guard() -> None:
    snap = snapshot("""
        network_rule_collections:
          - name: everything
            rules: [{name: all, destinations: [0.0.0.0/0, '::/0']}]
        """)
    assert flow(snap, "169.254.169.254", 80).layer is Layer.GUARD
    assert flow(snap, "fd00::1", 80).layer is Layer.GUARD


def test_explicit_rule_lifts_the_guard_even_when_a_star_rule_comes_first() -> None:
    snap = snapshot("""
        network_rule_collections:
          - name: first
            priority: 100
            rules: [{name: all, destinations: ['*'], ports: ['443']}]
          - name: second
            priority: 200
            rules: [{name: lan, destinations: [192.168.10.0/24], ports: ['443']}]
        """)
    decision = flow(snap, "192.168.10.4", 443)
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "network:first/all")


def test_service_tag_does_not_lift_the_guard() -> None:
    refs = References(service_tags={"AzureCloud.westeurope": ["10.0.0.0/8", "20.50.0.0/16"]})
    snap = snapshot("""
        network_rule_collections:
          - name: tags
            rules: [{name: cloud, destinations: [AzureCloud.westeurope]}]
        """, refs)
    assert flow(snap, "10.1.1.1", 443).layer is Layer.GUARD
    assert flow(snap, "20.50.3.4", 443).rule == "network:tags/cloud"


def test_unknown_service_tag_is_a_compile_error() -> None:
    with pytest.raises(CompileError, match=r"AzureCloud\.mars"):
        snapshot("""
            network_rule_collections:
              - name: tags
                rules: [{name: cloud, destinations: [AzureCloud.mars]}]
            """)


def test_network_rules_first_match_by_collection_priority_then_rule_order() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: late
            priority: 500
            action: allow
            rules: [{name: wide, destinations: [20.0.0.0/8]}]
          - name: early
            priority: 100
            action: deny
            rules:
              - {name: one-host, destinations: [20.1.1.1]}
              - {name: its-net, destinations: [20.1.1.0/24], action: allow}
        """)
    assert flow(snap, "20.1.1.1", 443).rule == "network:early/one-host"
    assert not flow(snap, "20.1.1.1", 443).allowed
    assert flow(snap, "20.1.1.2", 443).rule == "network:early/its-net"
    assert flow(snap, "20.9.9.9", 443).rule == "network:late/wide"
    assert flow(snap, "21.0.0.1", 443).layer is Layer.DEFAULT


@pytest.mark.parametrize(("ports", "port", "hit"), [
    (["443"], 443, True), (["443"], 444, False),
    (["9000-9010"], 9000, True), (["9000-9010"], 9010, True), (["9000-9010"], 9011, False),
    (["*"], 1, True), ([53, "123"], 123, True), ([53, "123"], 54, False),
])
def test_network_rule_ports_and_ranges(ports: list[object], port: int, hit: bool) -> None:
    snap = snapshot(f"""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: c
            rules: [{{name: r, destinations: [20.0.0.0/8], ports: {ports!r}}}]
        """)
    assert flow(snap, "20.1.2.3", port).allowed is hit


@pytest.mark.parametrize(("protocols", "protocol", "hit"), [
    (["TCP"], "tcp", True), (["TCP"], "udp", False), (["UDP"], "udp", True),
    (["ICMP"], "icmp", True), (["ICMP"], "tcp", False), (["Any"], "udp", True),
    (["TCP", "UDP"], "udp", True),
])
def test_network_rule_protocols(protocols: list[str], protocol: str, hit: bool) -> None:
    snap = snapshot(f"""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: c
            rules: [{{name: r, destinations: [20.0.0.0/8], protocols: {protocols!r}}}]
        """)
    assert flow(snap, "20.1.2.3", 123, protocol).allowed is hit


def test_network_rule_source_scope() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: c
            rules: [{name: r, destinations: [20.0.0.0/8], sources: [10.240.0.0/16]}]
        """)
    assert flow(snap, "20.1.2.3", 443, source="10.240.1.1").allowed
    assert not flow(snap, "20.1.2.3", 443, source="10.241.1.1").allowed
    assert not flow(snap, "20.1.2.3", 443).allowed


def test_network_rule_by_fqdn_allows_a_udp_flow_to_that_name() -> None:
    # Seed 003: `ntp.ubuntu.com:123` UDP as an Azure Firewall network rule.
    snap = snapshot("""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: aks
            rules: [{name: ntp, destinations: [ntp.ubuntu.com], protocols: [UDP],
                     ports: ['123']}]
        """)
    decision = snap.decide(Request(kind=Kind.FLOW, host="ntp.ubuntu.com", port=123,
                                   protocol="udp"))
    assert (decision.verdict, decision.layer) == (Verdict.ALLOW, Layer.NETWORK)
    assert not snap.decide(Request(kind=Kind.FLOW, host="ntp.ubuntu.com", port=123,
                                   protocol="tcp")).allowed


def test_ipv6_cidr_rules_match() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: c
            rules: [{name: v6, destinations: ['2606:4700::/32']}]
        """)
    assert flow(snap, "2606:4700::1111", 443).allowed
    assert not flow(snap, "2607::1", 443).allowed


def test_network_deny_applies_to_connect_requests_by_address() -> None:
    snap = snapshot("""
        network_rule_collections:
          - name: block
            action: deny
            rules: [{name: bad-net, destinations: [45.0.0.0/8]}]
        application_rule_collections:
          - name: c
            rules: [{name: r, targets: [files.example]}]
        """)
    decision = connect(snap, "files.example", 443, "45.1.2.3")
    assert (decision.verdict, decision.layer, decision.rule) == (
        Verdict.DENY, Layer.NETWORK, "network:block/bad-net")
