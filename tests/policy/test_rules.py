"""`policy.rules`: the one flattening of the policy's rules in evaluation order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.analysis.inventory import app_rules, destination, net_rules
from egressguard.engine import References
from egressguard.policy import Action, Policy
from egressguard.policy.rules import (
    Destination,
    DestKind,
    RuleId,
    RuleKind,
    application_rules,
    expand_fqdn_tags,
    network_rules,
)
from tests.export.policies import REFS, random_policy

POLICY = Policy.model_validate({
    "application_rule_collections": [
        {"name": "late", "priority": 300, "rules": [{"name": "x", "targets": ["x.com"]}]},
        {"name": "first", "priority": 100, "action": "deny", "report_only": True, "rules": [
            {"name": "a", "targets": ["a.com"]},
            {"name": "b", "targets": ["b.com"], "action": "allow",
             "fqdn_tags": ["AzureKubernetesService", "Unknown"]}]},
        {"name": "tie", "priority": 300, "rules": [{"name": "y", "targets": ["y.com"]}]}],
    "network_rule_collections": [{"name": "n", "rules": [
        {"name": "r", "destinations": ["*", "10.0.0.1", "0.0.0.0/0", "Storage", ".x.com"],
         "ports": ["*", 53]}]}]})


def test_collections_by_priority_then_file_order_with_effective_actions() -> None:
    rules = application_rules(POLICY)
    assert [str(r.id) for r in rules] == ["application:first/a", "application:first/b",
                                          "application:late/x", "application:tie/y"]
    assert [r.order for r in rules] == [1, 2, 3, 4]
    assert [r.action for r in rules[:2]] == [Action.DENY, Action.ALLOW]
    assert rules[0].report_only and not rules[2].report_only


def test_destinations_are_typed_once() -> None:
    (rule,) = network_rules(POLICY)
    assert [d.kind for d in rule.destinations] == [DestKind.ANY, DestKind.NET, DestKind.NET,
                                                   DestKind.TAG, DestKind.HOST]
    assert [d.explicit for d in rule.destinations] == [False, True, False, False, False], (
        "a /0 is `*` spelled differently: it never lifts the address guard")
    assert rule.all_ports and rule.ports == ((0, 65535), (53, 53))
    assert Destination.of("2001:db8::/32").kind is DestKind.NET


def test_fqdn_tags_expand_and_unknown_ones_are_returned_not_raised() -> None:
    rule = application_rules(POLICY)[1]
    patterns, unknown = expand_fqdn_tags(rule, REFS.fqdn_tags)
    assert patterns == ("b.com", "*.hcp.westeurope.azmk8s.io", "mcr.microsoft.com")
    assert unknown == ("Unknown",)


@pytest.mark.parametrize("text", ["application:c/r", "network:coll/with/slash/r"])
def test_rule_id_round_trips(text: str) -> None:
    assert str(RuleId.parse(text)) == text
    assert RuleId.parse("network:a/b/c") == RuleId(RuleKind.NETWORK, "a/b", "c")


@pytest.mark.parametrize("text", ["", "application", "application:norule", "flow:c/r",
                                  "application:/r", "application:c/", "default"])
def test_rule_id_parse_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="not a rule id"):
        RuleId.parse(text)


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_same_order_ids_and_actions_as_the_analysers_flattener(rnd: random.Random) -> None:
    """So the analyser (and the engine and firewall, which flatten the same way) can
    switch to this module without changing a decision or a finding."""
    policy = random_policy(rnd)
    refs = References(fqdn_tags=REFS.fqdn_tags)
    ours = application_rules(policy)
    theirs = app_rules(policy, refs)
    assert [(str(r.id), r.order, r.action, r.report_only, r.specs, r.sources) for r in ours] \
        == [(r.rule_id, r.order, r.action, r.report_only, r.specs, r.sources) for r in theirs]
    assert [expand_fqdn_tags(r, refs.fqdn_tags) for r in ours] == [
        (r.patterns, r.unknown_tags) for r in theirs]
    ours_net = network_rules(policy)
    assert [(str(r.id), r.order, r.action, r.protocols, r.ports, r.sources,
             [(d.kind.value, d.text) for d in r.destinations]) for r in ours_net] == [
        (r.rule_id, r.order, r.action, r.protocols, r.ports, r.sources,
         [(destination(d.text).kind, d.text) for d in r.destinations])
        for r in net_rules(policy)]
