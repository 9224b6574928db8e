"""Rules scoped to workload identities: the identity is a field of the request, part of
the memo key, mapped from the source when the point has no credential."""

from __future__ import annotations

import ipaddress

import pytest

from egressguard.engine import Kind, Request
from egressguard.policy import PolicyError, load_policy_text
from tests.engine.helpers import snapshot

POLICY = """
restrict_outbound_network_access: Enabled
identities:
  lab: {sources: [10.1.0.0/16]}
  lab-gpu: {sources: [10.1.2.0/24]}
  retired: {sources: [10.9.0.0/16], enabled: false}
application_rule_collections:
  - name: web
    priority: 100
    identities: [web, lab]
    rules:
      - {name: shop, targets: [shop.example]}
      - {name: narrowed, targets: [narrow.example], identities: [web]}
      - {name: disjoint, targets: [never.example], identities: [batch]}
      - {name: retired-only, targets: [retired.example]}
network_rule_collections:
  - name: flows
    priority: 200
    rules:
      - {name: db, destinations: [192.0.2.10/32], identities: [batch], protocols: [TCP]}
"""


def http(host: str, identity: str | None = None, source: str | None = None) -> Request:
    return Request(kind=Kind.HTTP, host=host, port=443, scheme="https",
                   identity=identity,
                   source=ipaddress.ip_address(source) if source else None)


def test_a_scoped_rule_allows_only_its_identities() -> None:
    snap = snapshot(POLICY)
    assert snap.decide(http("shop.example", "web")).allowed
    assert snap.decide(http("shop.example", "lab")).allowed
    assert not snap.decide(http("shop.example", "batch")).allowed
    assert not snap.decide(http("shop.example", "")).allowed
    assert not snap.decide(http("shop.example")).allowed


def test_identity_is_part_of_the_memo_key() -> None:
    snap = snapshot(POLICY)
    for _ in range(3):  # the second round is answered from the memo
        assert snap.decide(http("shop.example", "web")).allowed
        assert not snap.decide(http("shop.example", "batch")).allowed


def test_a_rule_list_narrows_its_collection_and_disjoint_lists_apply_to_nobody() -> None:
    snap = snapshot(POLICY)
    assert snap.decide(http("narrow.example", "web")).allowed
    assert not snap.decide(http("narrow.example", "lab")).allowed
    for who in ("web", "lab", "batch", "-nobody", None):
        assert not snap.decide(http("never.example", who)).allowed


def test_network_rules_are_scoped_too() -> None:
    snap = snapshot(POLICY)
    flow = Request(kind=Kind.FLOW, host="192.0.2.10", port=5432, protocol="tcp",
                   identity="batch")
    assert snap.decide(flow).allowed
    assert not snap.decide(Request(kind=Kind.FLOW, host="192.0.2.10", port=5432,
                                   protocol="tcp", identity="web")).allowed


def test_source_maps_to_the_identity_with_the_longest_prefix() -> None:
    snap = snapshot(POLICY)
    assert snap.source_identity(ipaddress.ip_address("10.1.2.3")) == "lab-gpu"
    assert snap.source_identity(ipaddress.ip_address("10.1.9.9")) == "lab"
    assert snap.source_identity(ipaddress.ip_address("10.9.0.1")) is None  # disabled
    assert snap.decide(http("shop.example", source="10.1.9.9")).allowed
    assert not snap.decide(http("shop.example", source="10.1.2.3")).allowed  # lab-gpu
    # An anonymous caller the point already considered ("") is not mapped again.
    assert not snap.decide(http("shop.example", "", source="10.1.9.9")).allowed


def test_require_identity_denies_anonymous_proxy_and_dns_requests() -> None:
    snap = snapshot("require_identity: true\n" + POLICY)
    decision = snap.decide(http("shop.example"))
    assert (decision.allowed, decision.rule) == (False, "guard:identity-required")
    dns = Request(kind=Kind.DNS, host="shop.example", protocol="udp",
                  source=ipaddress.ip_address("172.16.0.1"))
    assert snap.decide(dns).rule == "guard:identity-required"
    mapped = Request(kind=Kind.DNS, host="shop.example", protocol="udp",
                     source=ipaddress.ip_address("10.1.0.1"))
    assert snap.decide(mapped).allowed
    assert snap.decide(http("shop.example", "web")).allowed


@pytest.mark.parametrize("section, needle", [
    ("a: {jwt_subjects: [s]}\n  b: {jwt_subjects: [s]}", "JWT subject 's' maps to both"),
    ("a: {sources: [10.0.0.0/8]}\n  b: {sources: [10.0.0.1/8]}", "source '10.0.0.0/8'"),
    ("a: {spiffe_ids: ['http://x']}", "spiffe_ids"),
    ("'bad name': {}", "name 'bad name'"),
])
def test_identity_section_errors_name_the_problem(section: str, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle):
        load_policy_text(f"identities:\n  {section}\n")
