"""`budgets:` in a policy file: validated with the file, line and reason; sizes and
durations as operators write them; round-trips through the file format and the ARM JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from egressguard.control.errors import InvalidInput
from egressguard.control.properties import from_arm, to_arm
from egressguard.policy import PolicyError, dump_policy, load_policy, load_policy_text
from egressguard.store import Version

GOOD = """restrict_outbound_network_access: Enabled
budgets:
  - name: paste
    destinations: ["*.paste.example", 10.0.0.0/8, 192.0.2.7]
    identities: [ci-runner]
    per: [identity]
    direction: both
    max_bytes: 10 MiB
    window: 15m
    report_only: true
"""


def test_sizes_durations_and_destinations_are_read_canonically():
    budget = load_policy_text(GOOD, "p.yaml").budgets[0]
    assert budget.max_bytes == 10 * 2**20 and budget.window == 900
    assert budget.destinations == ["*.paste.example", "10.0.0.0/8", "192.0.2.7/32"]
    assert (budget.per, budget.direction, budget.report_only) == (["identity"], "both", True)
    defaults = load_policy_text("budgets: [{name: b, destinations: [x.test], "
                                "max_bytes: 5MB}]\n", "p.yaml").budgets[0]
    assert (defaults.max_bytes, defaults.window, defaults.direction) == (5_000_000, 3600, "up")
    assert defaults.per == ["destination", "identity"]


@pytest.mark.parametrize(("line", "value", "reason"), [
    (5, "max_bytes: lots", "size 'lots'"),
    (5, "max_bytes: 0", "greater than 0"),
    (5, "window: 0s", "greater than 0"),
    (5, "window: 1 fortnight", "duration '1 fortnight'"),
    (5, "direction: sideways", "'up', 'down' or 'both'"),
    (5, "per: [destination, destination]", "at most once"),
    (5, "per: [port]", "'destination' or 'identity'"),
    (5, "surprise: 1", "Extra inputs are not permitted"),
])
def test_a_bad_budget_is_refused_with_file_line_and_reason(tmp_path: Path, line, value,
                                                           reason):
    path = tmp_path / "policy.yaml"
    path.write_text("budgets:\n  - name: paste\n    destinations: [x.test]\n"
                    f"    max_bytes: 1000\n    {value}\n")
    if value.startswith("max_bytes"):
        path.write_text("budgets:\n  - name: paste\n    destinations: [x.test]\n"
                        f"    window: 60\n    {value}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert f"{path}: line {line}: budgets[0]." in message, message
    assert reason in message and "budget 'paste'" in message, message


def test_service_tags_and_duplicate_names_are_refused_naming_the_line(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text("budgets:\n  - name: a\n    destinations: [Storage]\n    max_bytes: 1\n")
    with pytest.raises(PolicyError, match=r"line 3: budgets\[0\].destinations\[0\]: "
                                          r"destination 'Storage': service tags"):
        load_policy(path)
    path.write_text("budgets:\n  - {name: a, destinations: [x.test], max_bytes: 1}\n"
                    "  - {name: a, destinations: [y.test], max_bytes: 2}\n")
    with pytest.raises(PolicyError, match=r"line 2: budgets: duplicate budget 'a'"):
        load_policy(path)


def test_budgets_round_trip_through_the_file_format_and_arm_json():
    policy = load_policy_text(GOOD, "p.yaml")
    assert load_policy_text(dump_policy(policy), "again.yaml") == policy
    version = Version("c", 1, policy, GOOD, "alice", datetime.now(UTC), "")
    arm = to_arm(version)
    assert arm["properties"]["budgets"][0]["maxBytes"] == 10 * 2**20
    assert arm["properties"]["budgets"][0]["reportOnly"] is True
    assert from_arm(arm) == policy
    with pytest.raises(InvalidInput) as caught:
        from_arm({"properties": {"budgets": [{"name": "x", "destinations": ["x.test"],
                                              "maxBytes": "many"}]}})
    assert caught.value.problems[0][0] == "properties.budgets[0].maxBytes"
