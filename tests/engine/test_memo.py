"""The snapshot's decision memo answers requests that carry resolved addresses and a
source too, and never hands one request another's answer: a name that now resolves into
a private range, a caller outside a rule's sources, another identity, report-only."""

from __future__ import annotations

import ipaddress

from egressguard.engine import Kind, Layer, Request
from tests.engine.helpers import snapshot

POLICY = """
restrict_outbound_network_access: Enabled
identities:
  lab: {sources: [10.1.0.0/16]}
application_rule_collections:
  - name: web
    priority: 100
    rules:
      - {name: shop, targets: [shop.example], protocols: ['http:80']}
      - {name: office, targets: [office.example], protocols: ['http:80'],
         sources: [192.168.7.0/24]}
      - {name: lab, targets: [lab.example], protocols: ['http:80'], identities: [lab]}
"""

PLAIN = """
restrict_outbound_network_access: Enabled
identities:
  lab: {sources: [10.1.0.0/16]}
application_rule_collections:
  - name: web
    priority: 100
    rules:
      - {name: shop, targets: [shop.example], protocols: ['http:80']}
"""

REPORTING = """
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: audit-first
    priority: 100
    report_only: true
    action: deny
    rules:
      - {name: watch, targets: [shop.example], protocols: ['http:80']}
  - name: web
    priority: 200
    rules:
      - {name: shop, targets: [shop.example], protocols: ['http:80']}
"""


def http(host: str, *addresses: str, source: str | None = None,
         identity: str | None = None) -> Request:
    """The request the gateway makes once it has resolved `host` (a new object each time,
    as the gateway builds one per request)."""
    return Request(kind=Kind.HTTP, host=host, port=80, scheme="http",
                   addresses=tuple(ipaddress.ip_address(a) for a in addresses),
                   source=ipaddress.ip_address(source) if source else None,
                   identity=identity)


def test_a_request_with_resolved_addresses_and_a_source_is_answered_from_the_memo() -> None:
    snap = snapshot(PLAIN)
    decision = snap.decide(http("shop.example", "93.184.216.34", source="172.20.0.5"))
    assert decision.allowed
    assert snap.decide(http("shop.example", "93.184.216.34", source="172.20.0.5")) \
        is decision
    # No rule is scoped by source: callers count only by the identity they map to.
    assert snap.decide(http("shop.example", "93.184.216.34", source="172.20.0.6")) \
        is decision
    lab = snap.decide(http("shop.example", "93.184.216.34", source="10.1.3.4"))
    assert lab.allowed and lab is not decision
    assert snap.decide(http("shop.example", "93.184.216.34", source="10.1.9.9")) is lab


def test_a_name_rebound_to_a_private_address_is_not_given_the_memoised_allow() -> None:
    snap = snapshot(POLICY)
    assert snap.decide(http("shop.example", "93.184.216.34")).allowed
    for private in ("10.0.0.5", "169.254.169.254", "127.0.0.1", "::ffff:10.0.0.5"):
        decision = snap.decide(http("shop.example", private))
        assert not decision.allowed and decision.layer is Layer.GUARD, private
    # One private address among public ones is enough, in any position.
    assert not snap.decide(http("shop.example", "93.184.216.34", "10.0.0.5")).allowed
    assert not snap.decide(http("shop.example", "10.0.0.5", "93.184.216.34")).allowed
    assert snap.decide(http("shop.example", "93.184.216.34")).allowed


def test_a_private_address_decided_first_does_not_deny_the_public_one_after() -> None:
    snap = snapshot(POLICY)
    assert not snap.decide(http("shop.example", "10.0.0.5")).allowed
    assert snap.decide(http("shop.example", "93.184.216.34")).allowed
    assert not snap.decide(http("shop.example", "10.0.0.5")).allowed


def test_a_rule_scoped_by_source_is_decided_per_source() -> None:
    snap = snapshot(POLICY)
    for _ in range(2):  # the second round comes from the memo
        assert snap.decide(http("office.example", "93.184.216.34",
                                source="192.168.7.20")).allowed
        assert not snap.decide(http("office.example", "93.184.216.34",
                                    source="192.168.8.20")).allowed
        assert not snap.decide(http("office.example", "93.184.216.34")).allowed


def test_a_source_mapped_to_an_identity_is_decided_as_that_identity() -> None:
    snap = snapshot(POLICY)
    for _ in range(2):
        assert snap.decide(http("lab.example", "93.184.216.34", source="10.1.3.4")).allowed
        assert not snap.decide(http("lab.example", "93.184.216.34",
                                    source="10.2.3.4")).allowed
        # A caller the point found anonymous is not mapped from its source.
        assert not snap.decide(http("lab.example", "93.184.216.34", source="10.1.3.4",
                                    identity="")).allowed
        assert snap.decide(http("lab.example", "93.184.216.34", identity="lab")).allowed


def test_report_only_rules_keep_their_answer_per_address() -> None:
    snap = snapshot(REPORTING)
    for _ in range(2):
        watched = snap.decide(http("shop.example", "93.184.216.34", source="172.20.0.5"))
        assert watched.verdict == "deny" and watched.report_only and watched.permitted
        rebound = snap.decide(http("shop.example", "10.0.0.5", source="172.20.0.5"))
        assert rebound.layer is Layer.GUARD and not rebound.permitted
    whole = snapshot("restrict_outbound_network_access: Enabled\nreport_only: true\n")
    for _ in range(2):
        assert whole.decide(http("shop.example", "10.0.0.5")).report_only
        assert whole.decide(http("shop.example", "10.0.0.5")).layer is Layer.GUARD
        assert whole.decide(http("shop.example", "93.184.216.34")).layer is Layer.DEFAULT
