"""The nft text: atomic replacement, names made safe, big tags in sets, what L3 skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from egressguard.engine import CompileError, References
from egressguard.firewall import Options, build_ruleset, render, render_ruleset
from egressguard.policy import Policy


def _policy(rules: list[dict[str, object]], **extra: object) -> Policy:
    return Policy.model_validate({"restrict_outbound_network_access": True, **extra,
                                  "network_rule_collections": [
                                      {"name": "c", "priority": 100, "rules": rules}]})


def test_ruleset_replaces_the_previous_table_in_one_transaction() -> None:
    text = render_ruleset(_policy([]), table="eg")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[:3] == ["table inet eg", "delete table inet eg", "table inet eg {"]
    assert "policy drop;" in text and "ct state established,related" in text


def test_unrestricted_policy_accepts_by_default_but_keeps_deny_rules() -> None:
    policy = _policy([{"name": "no-smtp", "action": "deny", "destinations": ["*"],
                       "protocols": ["tcp"], "ports": [25]}],
                     restrict_outbound_network_access=False)
    text = render_ruleset(policy)
    assert "policy accept;" in text
    assert 'tcp dport 25 counter drop comment "network:c/no-smtp"' in text


def test_fqdn_destination_is_left_to_the_proxy_with_a_note() -> None:
    text = render_ruleset(_policy([{"name": "n", "destinations": ["api.example.com"]}]))
    assert "# note: network:c/n: FQDN destination api.example.com is not enforced at L3" \
        in text
    assert 'comment "network:c/n"' not in text


def test_fqdn_resolved_at_render_time_only_when_asked() -> None:
    policy = _policy([{"name": "n", "destinations": ["api.example.com"], "ports": [443]}])
    ruleset = build_ruleset(policy, options=Options(
        resolve=lambda name: ["93.184.216.34"] if name == "api.example.com" else []))
    text = render(ruleset)
    assert 'ip daddr 93.184.216.34 meta l4proto { tcp, udp } th dport 443 counter accept' \
        in text


def test_hostile_rule_name_cannot_break_out_of_the_comment() -> None:
    hostile = 'x" ; flush ruleset ; "'
    with pytest.raises(ValidationError):  # the policy model refuses it first...
        _policy([{"name": hostile, "destinations": ["*"]}])
    policy = _policy([{"name": "x", "destinations": ["*"]}])
    # ...and the renderer still quotes a name that got past validation some other way.
    object.__setattr__(policy.network_rule_collections[0].rules[0], "name", hostile)
    text = render_ruleset(policy)
    assert "flush ruleset" in text  # kept readable...
    assert '"network:c/x? ; flush ruleset ; ?"' in text  # ...but inside one string
    assert text.count("flush ruleset") == 1


def test_large_service_tag_goes_into_a_named_interval_set_shared_by_rules() -> None:
    tag = [f"20.{i}.0.0/16" for i in range(0, 64, 2)]
    refs = References(service_tags={"Big": tag})
    policy = _policy([{"name": "a", "destinations": ["Big"], "protocols": ["tcp"]},
                      {"name": "b", "destinations": ["Big"], "protocols": ["udp"]}])
    text = render_ruleset(policy, refs)
    assert "set dst_0_v4 {" in text and "flags interval" in text
    assert text.count("ip daddr @dst_0_v4") == 2
    assert "set dst_1" not in text.replace("dst_1_v6", "")


def test_unknown_service_tag_is_refused_like_the_engine() -> None:
    with pytest.raises(CompileError, match="unknown service tag 'Nope'"):
        build_ruleset(_policy([{"name": "a", "destinations": ["Nope"]}]))


def test_report_only_policy_logs_would_be_drops_and_accepts() -> None:
    text = render_ruleset(_policy([], report_only=True))
    assert "policy accept;" in text
    assert "counter drop" not in text
    assert 'log prefix "egressguard report-only drop: " accept' in text


def test_report_only_collection_is_not_enforced() -> None:
    policy = Policy.model_validate({
        "restrict_outbound_network_access": True,
        "network_rule_collections": [{"name": "trial", "priority": 100, "report_only": True,
                                      "rules": [{"name": "a", "destinations": ["*"]}]}]})
    text = render_ruleset(policy)
    assert "network:trial/a: report-only collection, not enforced" in text
    assert 'comment "network:trial/a"' not in text


def test_gateway_dns_and_exempt_users_come_before_the_guard() -> None:
    text = render(build_ruleset(_policy([]), options=Options(
        gateway_addresses=(("10.0.0.5", 3128),), allow_dns_to=(("10.0.0.2", 53),),
        exempt_uids=(997,))))
    output = text.split("chain output {")[1].split("chain forward {")[0]
    order = [output.index(s) for s in ("meta skuid 997", 'oifname "lo" ip daddr 127.0.0.0/8',
                                       "ip daddr 10.0.0.5 tcp dport 3128",
                                       "ip daddr 10.0.0.2 meta l4proto { tcp, udp } th dport 53",
                                       "ip daddr @guard_v4 counter goto guard")]
    assert order == sorted(order)


def test_cli_render_writes_the_file(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("restrict_outbound_network_access: true\nnetwork_rule_collections:\n"
                      "  - {name: c, rules: [{name: a, destinations: [1.1.1.1], "
                      "protocols: [udp], ports: [53]}]}\n")
    out = tmp_path / "rules.nft"
    done = subprocess.run([sys.executable, "-m", "egressguard.cli.main", "firewall", "render",
                           "--policy", str(policy), "--out", str(out)], capture_output=True,
                          text=True, timeout=60, env={"EGRESSGUARD_HOME": str(tmp_path),
                                                      "PATH": "/usr/bin:/bin",
                                                      "PYTHONPATH": os.environ.get(
                                                          "PYTHONPATH", "")})
    assert done.returncode == 0, done.stderr
    assert f"# policy: {policy}" in out.read_text()
    assert 'ip daddr 1.1.1.1 udp dport 53 counter accept comment "network:c/a"' \
        in out.read_text()


def test_cli_render_rejects_both_sources(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "egressguard.cli.main", "firewall", "render",
                           "--policy", "x.yaml", "--cluster", "default"], capture_output=True,
                          text=True, timeout=60, env={"EGRESSGUARD_HOME": str(tmp_path),
                                                      "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "not both" in done.stderr
