"""The policy model and its files: every rule form, loader errors, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from egressguard.engine import compile_policy
from egressguard.policy import (
    CalloutRule,
    Policy,
    PolicyError,
    dump_policy,
    load_policy,
    load_policy_text,
)
from egressguard.policy.load import policy_to_data

FULL = """
restrict_outbound_network_access: Enabled
allowed_fqdn_list: [my-eventhub.servicebus.windows.net, '*.Bücher.de']
report_only: false
callouts:
  - {CalloutType: sql, CalloutUriRegex: 'myserver\\.database\\.windows\\.net', CanCall: true}
  - {callout_type: '*', uri_regex: 'evil', can_call: false}
application_rule_collections:
  - name: aks-required
    priority: 200
    action: allow
    report_only: true
    rules:
      - name: registry
        targets: [mcr.microsoft.com, '*.data.mcr.microsoft.com', .ubuntu.com, md-*.b.com]
        protocols: ['https:443', 'http', 'https:*', 'mssql:1433']
        sources: [10.240.0.0/16, 10.0.0.7]
        description: images
      - name: block
        action: deny
        fqdn_tags: [AzureKubernetesService]
network_rule_collections:
  - name: aks-network
    priority: 100
    rules:
      - name: tunnel
        destinations: [AzureCloud.westeurope, 20.1.2.0/24, 20.9.9.9, '*', '2606:4700::/32',
                       ntp.ubuntu.com]
        protocols: [UDP, TCP, ICMP, Any]
        ports: ['1194', '9000-9010', 22, '*']
service_endpoint_policies:
  - name: aml-storage
    resources:
      - /subscriptions/S/resourceGroups/RG/providers/Microsoft.Storage/storageAccounts/mystore
    aliases: [/services/Azure/MachineLearning]
"""


def test_every_rule_form_loads_canonically() -> None:
    policy = load_policy_text(FULL, "full.yaml")
    assert policy.restrict_outbound_network_access is True
    assert policy.allowed_fqdn_list == ["my-eventhub.servicebus.windows.net",
                                        "*.xn--bcher-kva.de"]
    app = policy.application_rule_collections[0]
    registry = app.rules[0]
    assert registry.targets == ["mcr.microsoft.com", "*.data.mcr.microsoft.com",
                                ".ubuntu.com", "md-*.b.com"]
    assert [str(p) for p in registry.protocols] == ["https:443", "http:80", "https:*",
                                                    "mssql:1433"]
    assert registry.sources == ["10.240.0.0/16", "10.0.0.7/32"]
    tunnel = policy.network_rule_collections[0].rules[0]
    assert tunnel.destinations == ["AzureCloud.westeurope", "20.1.2.0/24", "20.9.9.9/32", "*",
                                   "2606:4700::/32", "ntp.ubuntu.com"]
    assert tunnel.protocols == ["udp", "tcp", "icmp", "any"]
    assert [str(p) for p in tunnel.ports] == ["1194", "9000-9010", "22", "*"]
    assert policy.callouts[0] == CalloutRule(callout_type="sql",
                                             uri_regex=r"myserver\.database\.windows\.net",
                                             can_call=True)


def test_dump_and_load_round_trip_to_an_equal_policy() -> None:
    policy = load_policy_text(FULL)
    again = load_policy_text(dump_policy(policy))
    assert again == policy
    assert load_policy_text(json.dumps(policy_to_data(policy))) == policy  # JSON too


def test_explicit_empty_mapping_is_the_default_policy() -> None:
    assert load_policy_text("{}") == Policy()
    assert Policy().restrict_outbound_network_access is False


@pytest.mark.parametrize("text", ["", "   \n\t\n", "\n\n"])
def test_empty_or_whitespace_file_is_a_load_error_not_allow_all(text: str) -> None:
    # A truncate-then-write edit is seen half way: it must not open the gateway.
    ((line, _, reason),) = _problems(text)
    assert line == 1 and "empty" in reason


@pytest.mark.parametrize("text", ["# only a comment\n", "---\n", "~\n", "null\n"])
def test_document_with_no_mapping_is_a_load_error(text: str) -> None:
    ((_, _, reason),) = _problems(text)
    assert "must be a mapping" in reason


def test_duplicate_key_cannot_turn_restriction_off() -> None:
    ((line, _, reason),) = _problems("restrict_outbound_network_access: Enabled\n"
                                     "report_only: false\n"
                                     "restrict_outbound_network_access: Disabled\n")
    assert line == 3 and "duplicate key 'restrict_outbound_network_access'" in reason
    assert "line 1" in reason


def test_duplicate_key_deep_inside_a_rule_is_a_load_error() -> None:
    ((line, _, reason),) = _problems("""
network_rule_collections:
  - name: n
    rules:
      - name: r
        destinations: [10.0.0.0/8]
        action: deny
        action: allow
""")
    assert line == 8 and "duplicate key 'action'" in reason


def test_duplicate_key_in_json_is_a_load_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"restrict_outbound_network_access": true,\n'
                    ' "restrict_outbound_network_access": false}\n')
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (problem,) = caught.value.problems
    assert problem.line == 2 and "duplicate key" in problem.reason
    assert str(path) in str(caught.value)


def test_several_documents_in_one_file_are_a_load_error() -> None:
    ((line, _, reason),) = _problems("restrict_outbound_network_access: Enabled\n---\n"
                                     "restrict_outbound_network_access: Disabled\n")
    assert line == 2 and "more than one document" in reason


@pytest.mark.parametrize("text", [
    "a: " + "[" * 70 + "]" * 70,                                   # flow, within libyaml's cap
    "a:\n" + "".join("  " * i + "- \n" for i in range(1, 80)),    # block
    "a: " + "[" * 100_000,                                          # beyond libyaml's cap
    "a: &a [*a]",                                                   # a recursive alias
    '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",               # JSON
])
def test_nesting_beyond_the_depth_limit_is_a_load_error_not_a_traceback(text: str) -> None:
    ((_, _, reason),) = _problems(text)
    assert "nested deeper than 64" in reason or "nesting depth" in reason


def test_alias_expansion_bomb_is_refused_before_validation() -> None:
    lines = ["a: &a [" + ", ".join(["x"] * 10) + "]"]
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    ((_, _, reason),) = _problems("\n".join(lines))
    assert "expands to more than" in reason


def test_yaml_flow_mapping_still_loads() -> None:
    assert load_policy_text("{restrict_outbound_network_access: Enabled}") == Policy(
        restrict_outbound_network_access=True)


@pytest.mark.parametrize(("value", "expected"), [
    ("Enabled", True), ("Disabled", False), ("enabled", True), ("true", True),
    ("false", False), (True, True), (False, False)])
def test_arm_bool_accepts_enabled_disabled_and_booleans(value: object,
                                                        expected: bool) -> None:
    assert Policy(restrictOutboundNetworkAccess=value).restrict_outbound_network_access is (
        expected)
    assert Policy.model_validate(
        {"restrict_outbound_network_access": value}).restrict_outbound_network_access is (
        expected)


def test_arm_bool_rejects_other_strings() -> None:
    with pytest.raises(ValidationError, match="Enabled, Disabled"):
        Policy(restrictOutboundNetworkAccess="Maybe")


def test_arm_property_names_are_accepted() -> None:
    policy = Policy.model_validate({"restrictOutboundNetworkAccess": True,
                                    "allowedFqdnList": ["a.example"]})
    assert policy.allowed_fqdn_list == ["a.example"]


def _problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "bad.yaml")
    assert "bad.yaml" in str(caught.value)
    return [(p.line, p.path, p.reason) for p in caught.value.problems]


def test_invalid_regex_is_rejected_at_load_naming_its_rule() -> None:
    ((line, path, reason),) = _problems(
        "callouts:\n"
        "  - {CalloutType: sql, CalloutUriRegex: 'ok', CanCall: true}\n"
        "  - {CalloutType: kusto, CalloutUriRegex: '(unclosed', CanCall: true}\n")
    assert line == 3
    assert path == "callouts[1].CalloutUriRegex"
    assert "(unclosed" in reason and "missing )" in reason and "callout entry 1" in reason


def test_regex_re2_cannot_compile_is_a_load_error() -> None:
    # Backreferences are .NET/PCRE, not RE2.
    ((_, _, reason),) = _problems(
        "callouts: [{CalloutType: sql, CalloutUriRegex: '(a)\\1', CanCall: true}]")
    assert "RE2" in reason


def test_errors_name_line_path_and_reason_for_every_problem() -> None:
    problems = _problems("""
application_rule_collections:
  - name: web
    priority: 50
    rules:
      - name: r
        targets: [ok.example, 'a.*.example']
        protocols: ['ftp:21']
network_rule_collections:
  - name: net
    rules:
      - name: n
        destinations: [Storage.<region>]
        ports: ['70000']
""")
    by_path = {path: (line, reason) for line, path, reason in problems}
    assert by_path["application_rule_collections[0].priority"][0] == 4
    line, reason = by_path["application_rule_collections[0].rules[0].targets[1]"]
    assert line == 7 and "leftmost label" in reason and "rule 'r' in collection 'web'" in reason
    assert by_path["application_rule_collections[0].rules[0].protocols"][0] == 8
    line, reason = by_path["network_rule_collections[0].rules[0].destinations[0]"]
    assert line == 13 and "<region>" in reason
    assert by_path["network_rule_collections[0].rules[0].ports"][0] == 14


@pytest.mark.parametrize(("text", "fragment"), [
    ("a: [", "not valid YAML/JSON"),
    ("- 1\n- 2", "must be a mapping"),
    ("surprise: 1", "Extra inputs"),
    ("callouts: [{CalloutType: ftp, CalloutUriRegex: x, CanCall: true}]", "unknown callout"),
    ("application_rule_collections: [{name: a}, {name: a}]", "duplicate"),
    ("application_rule_collections: [{name: a, rules: [{name: r}]}]", "targets or fqdn_tags"),
    ("network_rule_collections: [{name: a, rules: [{name: r, destinations: []}]}]",
     "at least 1"),
    ("network_rule_collections: [{name: a, rules: [{name: r, destinations: ['*'], "
     "protocols: [SCTP]}]}]", "tcp"),
    ("service_endpoint_policies: [{name: s, aliases: [Azure]}]", "/services/"),
])
def test_bad_documents_are_rejected_with_a_reason(text: str, fragment: str) -> None:
    problems = _problems(text)
    assert any(fragment in reason for _, _, reason in problems), problems


def test_json_policy_file_errors_carry_lines(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"callouts": [{"CalloutType": "sql",
                                              "CalloutUriRegex": "(", "CanCall": True}]},
                               indent=2))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (problem,) = caught.value.problems
    assert problem.line == 5 and str(path) in str(caught.value)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml")


def test_rejected_file_leaves_the_loaded_policy_untouched(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("restrict_outbound_network_access: true\n")
    good = compile_policy(load_policy(path))
    path.write_text("restrict_outbound_network_access: [\n")
    with pytest.raises(PolicyError):
        load_policy(path)
    assert good.restricted is True


def test_policy_is_immutable() -> None:
    policy = Policy()
    with pytest.raises(ValidationError):
        policy.report_only = True  # type: ignore[misc]


LONG_NAME = "r" * 300


@pytest.mark.parametrize(("data", "path"), [
    ({"application_rule_collections": [{"name": LONG_NAME}]},
     "application_rule_collections[0].name"),
    ({"network_rule_collections": [{"name": "n", "rules": [
        {"name": LONG_NAME, "destinations": ["10.0.0.0/8"]}]}]},
     "network_rule_collections[0].rules[0].name"),
    ({"application_rule_collections": [{"name": "a", "rules": [
        {"name": "r", "targets": ["a" * 60 + "." + "b" * 300 + ".example"]}]}]},
     "application_rule_collections[0].rules[0].targets[0]"),
    ({"network_rule_collections": [{"name": "n", "rules": [
        {"name": "r", "destinations": ["x" * 100_000]}]}]},
     "network_rule_collections[0].rules[0].destinations[0]"),
    ({"callouts": [{"CalloutType": "sql", "CalloutUriRegex": "a" * 5000, "CanCall": True}]},
     "callouts[0].CalloutUriRegex"),
    ({"callouts": [{"CalloutType": "s" * 10_000, "CalloutUriRegex": "a", "CanCall": True}]},
     "callouts[0].CalloutType"),
    ({"application_rule_collections": [{"name": "a", "rules": [
        {"name": "r", "targets": ["a.example"], "description": "d" * 2000}]}]},
     "application_rule_collections[0].rules[0].description"),
    ({"service_endpoint_policies": [{"name": "s", "resources": ["/s" * 1000]}]},
     "service_endpoint_policies[0].resources[0]"),
    ({"trusted_ranges": ["1" * 100]}, "trusted_ranges[0]"),
    ({"application_rule_collections": [{"name": "a", "rules": [
        {"name": "r", "targets": ["a.example"], "protocols": ["https:" + "4" * 5000]}]}]},
     "application_rule_collections[0].rules[0].protocols"),
])
def test_over_long_strings_are_refused_without_echoing_them(data: dict[str, object],
                                                            path: str) -> None:
    problems = _problems(json.dumps(data))
    assert path in [p for _, p, _ in problems], problems
    assert all(len(reason) < 250 for _, _, reason in problems), problems


@pytest.mark.parametrize("name", ["has space", "slash/in/it", "-leading", "tab\there",
                                  "quote'", "ünïcode", "semi;colon"])
def test_rule_and_collection_names_use_a_safe_character_set(name: str) -> None:
    problems = _problems(json.dumps({"application_rule_collections": [
        {"name": name, "rules": [{"name": name, "targets": ["a.example"]}]}]}))
    assert {p for _, p, _ in problems} == {"application_rule_collections[0].name",
                                           "application_rule_collections[0].rules[0].name"}


def test_names_at_the_bound_load() -> None:
    name = "a" * 128
    policy = load_policy_text(json.dumps({"application_rule_collections": [
        {"name": name, "rules": [{"name": "x_1.y-2", "targets": ["a.example"]}]}]}))
    assert policy.application_rule_collections[0].name == name
