"""A replaced big snapshot whose packed rules nobody holds is taken apart a slice at a time
(`engine.holder`), packed rule lists included."""

from __future__ import annotations

from egressguard.engine.holder import FREEZE_AT, SnapshotHolder
from egressguard.policy import Policy
from egressguard.policy.packed import RuleList
from egressguard.source import active_of


def _policy(rules: int) -> Policy:
    return Policy.model_validate({
        "restrict_outbound_network_access": True,
        "application_rule_collections": [{"name": "big", "priority": 200, "rules": [
            {"name": f"r{i}", "targets": [f"h{i}.example.com"]} for i in range(rules)]}]})


def test_a_replaced_snapshot_s_packed_rules_are_freed_gradually() -> None:
    first = active_of(_policy(FREEZE_AT), "1", "test")
    rules = first.snapshot.policy.application_rule_collections[0].rules
    assert isinstance(rules, RuleList)
    records = rules.records  # watched, not held through the policy
    del rules
    holder = SnapshotHolder(first)
    del first
    holder.swap(active_of(_policy(FREEZE_AT + 1), "2", "test"))
    assert records == []
    assert len(holder.current.policy.application_rule_collections[0].rules) == FREEZE_AT + 1
