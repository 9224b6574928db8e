"""Big collections kept packed (`policy.packed`, issue 14 item 7): read, compared, dumped,
compiled and refused exactly as the plain list of models they stand for."""

from __future__ import annotations

import ipaddress
import json
import pickle
from typing import Any

import pytest

from egressguard.engine import Kind, Request, compile_policy
from egressguard.policy import (
    ApplicationRule,
    NetworkRule,
    Policy,
    PolicyError,
    dump_policy,
    dump_policy_json,
    load_policy_text,
)
from egressguard.policy.load import _json_streamed, _Rejected, policy_to_data
from egressguard.policy.packed import PACK_AT, RuleList
from egressguard.policy.rules import application_rules, network_rules

RULES = PACK_AT + 500


def app_rule(i: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": f"r{i}", "targets": [f"api{i}.svc.example.com"]}
    if i % 3 == 0:
        rule["protocols"] = ["https:443"]
    if i % 5 == 0:
        rule.update(action="deny", sources=["10.0.0.0/8"], description="five")
    if i % 7 == 0:
        rule["identities"] = ["batch"]
    return rule


def document(rules: int = RULES) -> dict[str, Any]:
    return {"restrict_outbound_network_access": True,
            "application_rule_collections": [
                {"name": "big", "priority": 300, "rules": [app_rule(i) for i in range(rules)]},
                {"name": "small", "priority": 200, "rules": [app_rule(-1)]}],
            "network_rule_collections": [{"name": "net", "priority": 100, "rules": [
                {"name": f"n{i}", "destinations": [f"10.1.{i // 250}.{i % 250}"],
                 "protocols": ["TCP"], "ports": [str(1000 + i % 3)]}
                for i in range(rules)]}]}


@pytest.fixture(scope="module")
def big() -> Policy:
    return Policy.model_validate(document())


def test_a_big_collection_is_packed_and_a_small_one_is_a_plain_list(big: Policy) -> None:
    assert isinstance(big.application_rule_collections[0].rules, RuleList)
    assert isinstance(big.network_rule_collections[0].rules, RuleList)
    assert type(big.application_rule_collections[1].rules) is list
    assert type(Policy.model_validate(document(PACK_AT - 1))
                .application_rule_collections[0].rules) is list


def test_every_packed_rule_reads_back_as_the_model_validated_alone(big: Policy) -> None:
    rules = big.application_rule_collections[0].rules
    assert len(rules) == RULES
    for i in (0, 5, 7, 35, 999, RULES - 1):
        alone = ApplicationRule.model_validate(app_rule(i))
        assert rules[i] == alone
        assert rules[i].model_fields_set == alone.model_fields_set
        assert repr(rules[i]) == repr(alone)
    assert rules[-1].name == f"r{RULES - 1}"
    assert [r.name for r in rules[10:13]] == ["r10", "r11", "r12"]
    assert list(rules)[35] == ApplicationRule.model_validate(app_rule(35))
    net = big.network_rule_collections[0].rules[7]
    assert net == NetworkRule.model_validate(document()["network_rule_collections"][0]
                                             ["rules"][7])


def test_a_read_rule_is_its_own_copy(big: Policy) -> None:
    rules = big.application_rule_collections[0].rules
    rules[1].targets.append("evil.example.com")  # a model's list, not the stored one
    assert rules[1].targets == ["api1.svc.example.com"]
    assert rules[2].protocols is not rules[4].protocols


def test_rules_sharing_a_shape_share_one_template(big: Policy) -> None:
    records = big.application_rule_collections[0].rules.records  # type: ignore[attr-defined]
    assert records[1][2] is records[2][2]  # same fields but name and targets
    assert records[1][2] is not records[3][2]  # r3 names its protocols
    assert len({id(r[2]) for r in records}) < 20


def test_packed_and_plain_lists_compare_as_the_rules_they_hold(big: Policy) -> None:
    again = Policy.model_validate(document())
    assert again == big
    rules = big.application_rule_collections[0].rules
    plain = [ApplicationRule.model_validate(app_rule(i)) for i in range(RULES)]
    assert rules == plain
    assert big.application_rule_collections[0].model_copy(update={"rules": plain}) == \
        big.application_rule_collections[0]
    other = document()
    other["application_rule_collections"][0]["rules"][1200]["description"] = "changed"
    assert Policy.model_validate(other) != big
    other = document()
    other["application_rule_collections"][0]["rules"][1200]["name"] = "renamed"
    assert Policy.model_validate(other) != big


def test_dumps_and_loads_round_trip(big: Policy) -> None:
    data = policy_to_data(big)
    plain = big.model_copy(update={kind: [c.model_copy(update={"rules": list(c.rules)})
                                          for c in getattr(big, kind)]
                                   for kind in ("application_rule_collections",
                                                "network_rule_collections")})
    assert json.dumps(data) == json.dumps(policy_to_data(plain))  # the same, in order
    assert data["application_rule_collections"][0]["rules"][5] == {
        "name": "r5", "action": "deny", "targets": ["api5.svc.example.com"],
        "sources": ["10.0.0.0/8"], "description": "five"}
    assert load_policy_text(dump_policy_json(big)) == big
    assert load_policy_text(dump_policy(big)) == big
    assert Policy.model_validate(big.model_dump()) == big
    assert Policy.model_validate_json(big.model_dump_json()) == big
    assert pickle.loads(pickle.dumps(big)) == big


def test_the_flattening_reads_packed_rules_as_it_reads_models(big: Policy) -> None:
    plain = big.model_copy(update={"application_rule_collections": [
        c.model_copy(update={"rules": list(c.rules)})
        for c in big.application_rule_collections]})
    assert type(plain.application_rule_collections[0].rules) is list
    assert application_rules(plain) == application_rules(big)
    flat = application_rules(big)
    assert [r.order for r in flat] == list(range(1, RULES + 2))
    assert str(flat[0].id) == "application:small/r-1"
    assert flat[1 + 7].identities == frozenset({"batch"})
    assert flat[1 + 5].action == "deny" and flat[1 + 5].sources[0].prefixlen == 8
    assert len(network_rules(big)) == RULES


def test_a_packed_policy_decides_as_its_rules_say(big: Policy) -> None:
    snapshot = compile_policy(big)
    allowed = snapshot.decide(Request(kind=Kind.CONNECT, host="api1.svc.example.com",
                                      port=443))
    assert allowed.allowed and allowed.rule == "application:big/r1"
    denied = snapshot.decide(Request(kind=Kind.CONNECT, host="api10.svc.example.com",
                                     port=443, source=ipaddress.ip_address("10.2.3.4")))
    assert not denied.allowed and denied.rule == "application:big/r10"
    assert not snapshot.decide(Request(kind=Kind.CONNECT, host="api14.svc.example.com",
                                       port=443)).allowed  # r14 is for identity batch
    flow = snapshot.decide(Request(kind=Kind.FLOW, host="10.1.0.7", port=1001,
                                   protocol="tcp"))
    assert flow.allowed and flow.rule == "network:net/n7"


def test_a_bad_rule_deep_in_a_big_collection_is_refused_at_its_path_and_line() -> None:
    doc = document()
    doc["application_rule_collections"][0]["rules"][1234]["targets"] = ["bad host"]
    text = json.dumps(doc, indent=1)
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "big.json")
    (problem,) = caught.value.problems
    assert problem.path == "application_rule_collections[0].rules[1234].targets[0]"
    assert "rule 'r1234' in collection 'big'" in problem.reason
    lines = [n for n, line in enumerate(text.splitlines(), 1) if '"bad host"' in line]
    assert [problem.line] == lines


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [1, {"c": null}], "application_rule_collections": []}',
    ' {\n "application_rule_collections" : [ {"name": "x", "rules": [ {"n": 1} , {} ]},'
    ' 5 ], "network_rule_collections": {"rules": []}, "d": "\\u00e9"}\n ',
    '{"application_rule_collections": [{"rules": "no list"}], "e": {}}',
    '{}',
])
def test_the_streamed_json_reads_small_documents_as_json_loads(text: str) -> None:
    assert _json_streamed(text) == json.loads(text)


@pytest.mark.parametrize("text", [
    '{"a": 1, "a": 2}',
    '{"application_rule_collections": [{"rules": [], "rules": []}]}',
    '{"application_rule_collections": [{"rules": [{"name": "x", "name": "y"}]}]}',
    '{"a": 1} {"b": 2}',
    '{"a": 1,}',
    '{"a" 1}',
    '[1]',
])
def test_the_streamed_json_refuses_what_json_loads_or_the_loader_refuses(text: str) -> None:
    with pytest.raises((ValueError, StopIteration, _Rejected)):
        _json_streamed(text)


def test_a_duplicate_key_deep_in_a_big_json_collection_is_refused() -> None:
    text = json.dumps(document())
    text = text.replace('{"name": "r1400", ', '{"name": "r1400", "name": "again", ', 1)
    with pytest.raises(PolicyError, match="duplicate key 'name'"):
        load_policy_text(text, "big.json")


def test_a_streamed_big_json_collection_is_validated_and_packed(big: Policy) -> None:
    data = _json_streamed(json.dumps(document()))
    assert isinstance(data["application_rule_collections"][0]["rules"], RuleList)
    assert type(data["application_rule_collections"][1]["rules"][0]) is dict  # small
    assert load_policy_text(json.dumps(document())) == big
