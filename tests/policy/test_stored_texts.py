"""The texts a version is stored as (`store.render`, issue 14 item 7): exactly what
`dump_policy` and `dump_policy_json` write, made a slice at a time or by a child process."""

from __future__ import annotations

import json
from typing import Any

from egressguard.policy import Policy, dump_policy, dump_policy_json, load_policy_text
from egressguard.policy.load import json_text, policy_to_data
from egressguard.store import render


def _policy(rules: int) -> Policy:
    return Policy.model_validate({
        "restrict_outbound_network_access": True,
        "identities": {"batch": {"sources": ["10.9.0.0/16"]}},
        "budgets": [{"name": "b", "destinations": ["*"], "max_bytes": "10MB"}],
        "application_rule_collections": [{"name": "big", "priority": 200, "rules": [
            {"name": f"r{i}", "targets": [f"h{i}.example.com", "bücher.de"],
             "description": "ünïcode \" quoted and a long line " * (i % 3),
             "protocols": ["https", "http:8080"]} for i in range(rules)]}],
        "network_rule_collections": [{"name": "n", "rules": [
            {"name": "ntp", "destinations": ["10.0.0.0/8"], "ports": ["123", "1-9"]}]}]})


def test_json_text_is_json_dumps_with_long_lists_in_slices() -> None:
    data: dict[str, Any] = {"a": [{"b": "é", "c": [1, 2.5, None, True]}] * 4500, "d": {}}
    assert json_text(data) == json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    data = policy_to_data(_policy(2500))
    assert json_text(data) == json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def test_a_big_policy_s_texts_are_the_dumps_and_load_back(monkeypatch) -> None:
    monkeypatch.setattr(render, "CHILD_AT", 1000)
    big = _policy(1200)
    text, json_form = render.stored_texts(big)  # YAML from a child process
    assert text == dump_policy(big)
    assert json_form == dump_policy_json(big)
    assert load_policy_text(text, "v.yaml") == big == load_policy_text(json_form)


def test_a_failing_child_leaves_the_yaml_to_this_process(monkeypatch) -> None:
    monkeypatch.setattr(render, "CHILD_AT", 1000)
    monkeypatch.setattr(render, "_CHILD", "raise SystemExit(3)")
    big = _policy(1000)
    assert render.stored_texts(big) == (dump_policy(big), dump_policy_json(big))


def test_a_small_policy_s_texts_are_the_dumps() -> None:
    small = _policy(3)
    assert render.stored_texts(small) == (dump_policy(small), dump_policy_json(small))
