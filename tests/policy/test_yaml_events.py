"""Policy YAML read from libyaml's events (`policy.load._yaml_data`, issue 14 item 7): the
same data as the line-aware loader builds, and everything it cannot build exactly left to
that loader, which reports errors with their lines."""

from __future__ import annotations

import pytest

from egressguard.policy import Policy, PolicyError, dump_policy, load_policy_text
from egressguard.policy.load import _parse_yaml, _yaml_data
from tests.policy.test_load import FULL

SAME = [
    FULL,
    "a: 1\nb: yes\nc: ~\nd: 1.5\ne: 2001-12-14\nf: '1'\ng: [0x1f, 1_000, .inf, -.5, 0o17]\n",
    "a: {b: c, d: [e, {f: g}]}\nh: null\ni: Off\nj: ''\nk: \"\\u00e9\"\n",
    "- 1\n- two\n",
    "a: |\n  text\n  more\nb: >\n  folded\n  line\n",
    "? complex key\n: value\n",
]
LEFT_TO_THE_LOADER = [
    "a: &x 1\nb: *x\n",           # aliases
    "a: !!str 1\n",               # an explicit tag
    "<<: {a: 1}\nb: 2\n",         # a merge key
    "a: 1\na: 2\n",               # a duplicate key
    "1: 2\n1.0: 3\n",             # equal keys
    "a: 1\n---\nb: 2\n",          # two documents
    "a: [1, 2\n",                 # a syntax error
    "? [1]\n: 2\n",               # a sequence as a key
    "",
]


@pytest.mark.parametrize("text", SAME)
def test_events_build_the_data_the_loader_builds(text: str) -> None:
    data = _yaml_data(text)
    assert data is not None
    assert repr(data) == repr(_parse_yaml(text, "p.yaml")[1])  # 1, True, 1.0 told apart


@pytest.mark.parametrize("text", LEFT_TO_THE_LOADER)
def test_what_events_cannot_build_exactly_is_left_to_the_loader(text: str) -> None:
    assert _yaml_data(text) is None


def test_nesting_deeper_than_the_bound_is_left_to_the_loader() -> None:
    assert _yaml_data("a: " + "[" * 70 + "]" * 70 + "\n") is None
    assert _yaml_data("a: " + "[" * 10 + "]" * 10 + "\n") is not None


def test_a_duplicate_key_is_still_refused_at_its_line() -> None:
    text = "restrict_outbound_network_access: Enabled\nreport_only: false\n" \
           "restrict_outbound_network_access: Disabled\n"
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "p.yaml")
    (problem,) = caught.value.problems
    assert problem.line == 3 and "duplicate key" in problem.reason


def test_a_big_yaml_policy_loads_as_its_data_and_errors_keep_their_lines() -> None:
    data = {"restrict_outbound_network_access": True, "application_rule_collections": [
        {"name": "big", "priority": 200, "rules": [
            {"name": f"r{i}", "targets": [f"h{i}.example.com"], "protocols": ["https"]}
            for i in range(3000)]}]}
    policy = Policy.model_validate(data)
    text = dump_policy(policy)
    assert load_policy_text(text, "big.yaml") == policy
    bad = text.replace("h2999.example.com", "h2999 example.com")
    with pytest.raises(PolicyError) as caught:
        load_policy_text(bad, "big.yaml")
    (problem,) = caught.value.problems
    assert problem.path == "application_rule_collections[0].rules[2999].targets[0]"
    assert problem.line == bad.splitlines().index("    - h2999 example.com") + 1
