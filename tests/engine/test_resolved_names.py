"""Names are decided by name rules (spec section 4 step 5, amended): an address-based
network rule allows a name only when it opts in (`match_resolved_names`), so a name that
nothing could allow need never be resolved; `trusted_ranges` lets allowed names resolve
into private ranges without opening those ranges to flows or IP literals."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from egressguard.engine import Layer, References, Verdict
from egressguard.policy import Policy
from tests.engine.helpers import connect, flow, snapshot, url

REFS = References(service_tags={"AzureCloud": ["20.0.0.0/8", "40.0.0.0/8"]})
ADDRESS_RULES = """
restrict_outbound_network_access: true
network_rule_collections:
  - name: net
    rules:
      - {name: cidr, destinations: [20.10.0.0/16]}
      - {name: tag, destinations: [AzureCloud]}
      - {name: any, destinations: ['*'], ports: ['22']}
application_rule_collections:
  - name: apps
    rules: [{name: ok, targets: [allowed.example], protocols: ['https:443', 'http:80']}]
"""


def test_address_rules_do_not_allow_names_that_resolve_into_them() -> None:
    snap = snapshot(ADDRESS_RULES, REFS)
    for address in ("20.10.1.1", "40.1.1.1"):
        decision = connect(snap, "c2VjcmV0.attacker.example", 443, address)
        assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.DEFAULT)
    assert not connect(snap, "c2VjcmV0.attacker.example", 22, "93.184.216.34").allowed


def test_address_rules_still_decide_ip_literals_and_flows() -> None:
    snap = snapshot(ADDRESS_RULES, REFS)
    assert connect(snap, "20.10.1.1", 443).layer is Layer.NETWORK
    assert connect(snap, "40.1.1.1", 443).allowed
    assert flow(snap, "93.184.216.34", 22).allowed
    assert not flow(snap, "93.184.216.34", 23).allowed


def test_address_rules_without_opt_in_never_make_names_resolvable() -> None:
    assert snapshot(ADDRESS_RULES, REFS).decides_by_address is False


@pytest.mark.parametrize("destination", ["20.10.0.0/16", "AzureCloud", "'*'"])
def test_opted_in_rule_makes_names_resolvable_and_allows_them_by_address(
        destination: str) -> None:
    snap = snapshot(f"""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: net
            rules: [{{name: r, destinations: [{destination}], match_resolved_names: true}}]
        """, REFS)
    assert snap.decides_by_address is True
    decision = connect(snap, "cdn.example", 443, "20.10.1.1")
    assert (decision.verdict, decision.layer) == (Verdict.ALLOW, Layer.NETWORK)


@pytest.mark.parametrize("rule", [
    "{name: r, action: deny, destinations: ['*'], match_resolved_names: true}",
    "{name: r, destinations: [ntp.ubuntu.com], match_resolved_names: true}",
])
def test_opt_in_that_cannot_allow_by_address_does_not_make_names_resolvable(
        rule: str) -> None:
    snap = snapshot(f"""
        restrict_outbound_network_access: true
        network_rule_collections: [{{name: net, rules: [{rule}]}}]
        """)
    assert snap.decides_by_address is False


POLICIES = [ADDRESS_RULES, """
restrict_outbound_network_access: false
network_rule_collections:
  - name: block
    action: deny
    rules: [{name: evil, destinations: [20.10.0.0/16]}]
application_rule_collections:
  - {name: deny, action: deny, rules: [{name: paste, targets: [pastebin.com]}]}
""", """
restrict_outbound_network_access: true
allowed_fqdn_list: [allowed.example]
trusted_ranges: [10.0.0.0/8]
network_rule_collections:
  - name: net
    rules:
      - {name: fqdn, destinations: [ntp.example], ports: ['123'], protocols: [UDP]}
      - {name: lan, destinations: [10.1.0.0/16]}
"""]
NAMES = ["allowed.example", "c2VjcmV0.attacker.example", "pastebin.com", "ntp.example"]
ADDRESSES = [(), ("20.10.1.1",), ("10.1.2.3",), ("10.9.9.9",), ("169.254.169.254",),
             ("93.184.216.34", "20.10.0.1"), ("127.0.0.1",)]


@pytest.mark.parametrize("text", POLICIES)
def test_a_name_denied_without_addresses_is_denied_whatever_it_resolves_to(text: str) -> None:
    # The gateway relies on this to decide before it resolves: it is what makes skipping
    # the DNS query safe when `decides_by_address` is false.
    snap = snapshot(text, REFS)
    assert snap.decides_by_address is False
    for name, port in itertools.product(NAMES, (80, 443, 123)):
        if connect(snap, name, port).allowed:
            continue
        for addresses in ADDRESSES:
            assert not connect(snap, name, port, *addresses).allowed, (name, port, addresses)


TRUSTED = """
restrict_outbound_network_access: true
trusted_ranges: [10.0.0.0/8, 'fd00::/8']
application_rule_collections:
  - name: apps
    rules: [{name: internal, targets: ['*.corp.example'], protocols: ['https:443', 'http:80']}]
network_rule_collections:
  - name: net
    rules: [{name: everything, destinations: ['*'], match_resolved_names: true}]
"""


def test_trusted_range_lets_an_allowed_name_resolve_into_a_private_range() -> None:
    snap = snapshot(TRUSTED)
    decision = connect(snap, "git.corp.example", 443, "10.1.2.3", "fd00::5")
    assert (decision.verdict, decision.layer) == (Verdict.ALLOW, Layer.APPLICATION)
    assert url(snap, "http://git.corp.example/x", "10.1.2.3").allowed
    # Without the trusted range the guard refuses the same answer (DNS rebinding).
    plain = snapshot(TRUSTED.replace("trusted_ranges: [10.0.0.0/8, 'fd00::/8']", ""))
    assert connect(plain, "git.corp.example", 443, "10.1.2.3").layer is Layer.GUARD


def test_trusted_range_does_not_open_the_range_itself() -> None:
    snap = snapshot(TRUSTED)
    # A literal or a flow into the range is still decided by network rules and the guard.
    assert connect(snap, "10.1.2.3", 443).layer is Layer.GUARD
    assert flow(snap, "10.1.2.3", 443).layer is Layer.GUARD
    # A name that only the opted-in `*` rule would allow gets nothing from the trust.
    decision = connect(snap, "c2VjcmV0.attacker.example", 443, "10.1.2.3")
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.DEFAULT)
    # Addresses outside the trusted ranges stay guarded for allowed names too.
    assert connect(snap, "git.corp.example", 443, "169.254.169.254").layer is Layer.GUARD
    assert connect(snap, "git.corp.example", 443, "10.1.2.3", "127.0.0.1").layer is (
        Layer.GUARD)


def test_network_deny_rule_still_denies_an_allowed_name_resolving_into_it() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        network_rule_collections:
          - {name: block, priority: 100, action: deny,
             rules: [{name: bad, destinations: [20.10.0.0/16]}]}
        application_rule_collections:
          - {name: apps, rules: [{name: ok, targets: [allowed.example]}]}
        """)
    assert connect(snap, "allowed.example", 443, "93.184.216.34").allowed
    decision = connect(snap, "allowed.example", 443, "20.10.1.1")
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "network:block/bad")


def test_network_rule_naming_a_private_cidr_still_lifts_the_guard_for_allowed_names() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        network_rule_collections:
          - {name: lan, rules: [{name: db, destinations: [10.5.0.0/16]}]}
        application_rule_collections:
          - {name: apps, rules: [{name: ok, targets: [db.corp.example]}]}
        """)
    assert connect(snap, "db.corp.example", 443, "10.5.0.9").layer is Layer.APPLICATION
    assert not connect(snap, "other.example", 443, "10.5.0.9").allowed


@pytest.mark.parametrize("bad", ["0.0.0.0/0", "::/0", "10.0.0.0/33", "corp.example"])
def test_trusted_ranges_must_be_cidrs_narrower_than_everything(bad: str) -> None:
    with pytest.raises(ValidationError, match="trusted range"):
        Policy(trusted_ranges=[bad])


def test_trusted_ranges_are_canonical() -> None:
    assert Policy(trusted_ranges=["10.1.2.3/8"]).trusted_ranges == ["10.0.0.0/8"]
