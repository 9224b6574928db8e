"""Every finding kind: a policy that triggers it and the fixed policy that does not."""

from __future__ import annotations

import pytest

from egressguard.analysis import CHECKS, Finding, Severity, analyze
from egressguard.engine import References
from egressguard.policy import load_policy_text

R = "restrict_outbound_network_access: Enabled\n"
REFS = References(
    service_tags={"AzureCloud.westeurope": ["20.50.0.0/16"], "AzureMachineLearning": [
        "20.38.0.0/24"], "Storage.westeurope": ["20.60.0.0/16"], "Sql": ["20.61.0.0/16"],
        "AzureFrontDoor.Frontend": ["20.62.0.0/16"]},
    storage_aliases={"/services/Azure/MachineLearning": ["azureml*"],
                     "/services/Azure/Everything": ["*"]})


def app(targets: str, protocols: str = "['https:443']", priority: int = 200,
        action: str = "allow", name: str = "c") -> str:
    return f"""
application_rule_collections:
  - name: {name}
    priority: {priority}
    action: {action}
    rules: [{{name: r, targets: {targets}, protocols: {protocols}}}]
"""


def net(destinations: str, ports: str = "['443']", protocols: str = "[TCP]",
        name: str = "n", priority: int = 100, action: str = "allow") -> str:
    return f"""
network_rule_collections:
  - name: {name}
    priority: {priority}
    action: {action}
    rules: [{{name: r, destinations: {destinations}, protocols: {protocols}, ports: {ports}}}]
"""


SEP = """
service_endpoint_policies:
  - name: aml
    resources:
      - /subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/mystore
    aliases: [/services/Azure/MachineLearning]
"""
def callout(kind: str, regex: str) -> str:
    return R + f"callouts: [{{callout_type: {kind}, uri_regex: '{regex}', can_call: true}}]"


UNANCHORED = r"myserver\.database\.windows\.net"
ANCHORED = r"^https://myserver\.database\.windows\.net/?$"
EVENTHUB = "allowed_fqdn_list: [my-eventhub.servicebus.windows.net]\n"

# check -> (policy that triggers it, fixed policy)
CASES: dict[str, tuple[str, str]] = {
    "any-host": (R + app("['*']"), R + app("[mcr.microsoft.com]")),
    "network-any": (R + net("['*']", "['*']", "[Any]"), R + net("[20.38.0.0/24]")),
    "broad-cidr": (R + net("[16.0.0.0/4]"), R + net("[16.0.0.0/24]")),
    "guard-lifted": (R + net("[169.254.169.254/32]", "['80']"), R + net("[20.1.2.3/32]")),
    "wildcard-storage": (R + app("['*.blob.core.windows.net']"),
                         R + app("[mystore.blob.core.windows.net]") + SEP),
    "shared-front-door": (R + app("['*.azurefd.net']"),
                          R + app("[ml.azure.com, automlresources-prod.azureedge.net]")),
    "multi-tenant-wildcard": (R + app("['*.database.windows.net']"),
                              R + app("[myserver.database.windows.net]")),
    "broad-service-tag": (R + net("[AzureCloud.westeurope]"), R + net("[AzureMachineLearning]")),
    "curated-registry": (R + app("[viennaglobal.azurecr.io]"),
                         R + app("[mcr.microsoft.com, '*.data.mcr.microsoft.com']")),
    "unrestricted-egress": ("", R),
    "unrestricted-with-allow-rules": (EVENTHUB, R + EVENTHUB),
    "immutable-callouts-active": ("restrict_outbound_network_access: Disabled", R),
    "callout-unrestricted": (callout("webapi", ".*"), callout("sql", ANCHORED)),
    "callout-unanchored": (callout("sql", UNANCHORED), callout("sql", ANCHORED)),
    "storage-without-sep": (R + app("['*.blob.core.windows.net']"),
                            R + app("['*.blob.core.windows.net']") + SEP),
    "sep-ineffective": (R + app("['*.blob.core.windows.net']") + """
service_endpoint_policies: [{name: all, aliases: [/services/Azure/Everything]}]""",
                        R + app("['*.blob.core.windows.net']") + SEP),
    "shadowed-rule": (R + app("['*.blob.core.windows.net']", priority=150, name="a")
                      + app("[evil.blob.core.windows.net]", priority=200, action="deny",
                            name="d").replace("application_rule_collections:\n", ""),
                      R + app("['*.blob.core.windows.net']", priority=150, name="a")
                      + app("[evil.blob.core.windows.net]", priority=100, action="deny",
                            name="d").replace("application_rule_collections:\n", "")),
    "allow-deny-overlap": (R + app("['*.contoso.com']", priority=150, name="a")
                           + app("['.contoso.com']", priority=200, action="deny",
                                 name="d").replace("application_rule_collections:\n", ""),
                           R + app("['*.contoso.com']", priority=150, name="a")
                           + app("['.contoso.com']", priority=100, action="deny",
                                 name="d").replace("application_rule_collections:\n", "")),
    "fqdn-nonstandard-port": (R + app("[git.contoso.com]", "['https:22']"),
                              R + app("[git.contoso.com]", "['https:443']")),
    "report-only": (R + "report_only: true\n", R),
    "unresolved-reference": (R + net("[NoSuchTag]"), R + net("[AzureMachineLearning]")),
}


def checks(text: str) -> list[Finding]:
    return analyze(load_policy_text(text or "{}"), REFS).findings


def test_every_check_has_a_case() -> None:
    assert set(CASES) == set(CHECKS)


@pytest.mark.parametrize("check", sorted(CASES))
def test_policy_triggers_check_and_fixed_policy_does_not(check: str) -> None:
    bad, fixed = CASES[check]
    found = [f for f in checks(bad) if f.check == check]
    assert found, f"{check} not reported for:\n{bad}"
    for finding in found:
        assert finding.why and finding.fix and finding.rule and finding.title
    assert not [f for f in checks(fixed) if f.check == check], f"{check} still reported"


def one(text: str, check: str) -> Finding:
    found = [f for f in checks(text) if f.check == check]
    assert len(found) == 1, found
    return found[0]


def test_wildcard_storage_names_rule_example_and_is_high_without_sep() -> None:
    finding = one(R + app("['*.blob.core.windows.net']"), "wildcard-storage")
    assert (finding.severity, finding.rule, finding.target, finding.example) == (
        Severity.HIGH, "application:c/r", "*.blob.core.windows.net",
        "exfil0probe.blob.core.windows.net")


@pytest.mark.parametrize("pattern", ["*.queue.core.windows.net", "*.core.windows.net",
                                     ".dfs.core.windows.net", "st*.file.core.windows.net",
                                     "*.web.core.chinacloudapi.cn",
                                     "*.table.core.usgovcloudapi.net", "*.windows.net"])
def test_wildcard_storage_covers_sibling_services_and_sovereign_clouds(pattern: str) -> None:
    assert one(R + app(f"['{pattern}']"), "wildcard-storage").severity is Severity.HIGH


def test_glob_that_cannot_name_an_account_is_not_wildcard_storage() -> None:
    assert not [f for f in checks(R + app("['md-*.blob.core.windows.net']"))
                if f.check == "wildcard-storage"]


def test_wildcard_storage_with_sep_is_informational_in_every_layer() -> None:
    assert one(R + app("['*.blob.core.windows.net']") + SEP,
               "wildcard-storage").severity is Severity.INFO
    # The allowed FQDN list also opens callouts; the engine applies the SEP to those too.
    finding = one(R + "allowed_fqdn_list: ['*.blob.core.windows.net']\n" + SEP,
                  "wildcard-storage")
    assert (finding.severity, finding.rule) == (Severity.INFO,
                                                "allowed_fqdn:*.blob.core.windows.net")


def test_storage_tag_without_sep_is_wildcard_storage_and_storage_without_sep() -> None:
    text = R + net("[Storage.westeurope]")
    assert one(text, "wildcard-storage").severity is Severity.HIGH
    finding = one(text, "storage-without-sep")
    assert finding.severity is Severity.HIGH and finding.rule == "network:n/r"
    assert one(text + SEP, "wildcard-storage").severity is Severity.LOW


def test_named_storage_accounts_without_sep_are_a_low_finding() -> None:
    finding = one(R + app("[mystore.blob.core.windows.net]"), "storage-without-sep")
    assert (finding.severity, finding.target) == (Severity.LOW,
                                                  "mystore.blob.core.windows.net")


def test_front_door_tag_and_cdn_wildcard_are_shared_front_doors() -> None:
    assert one(R + net("[AzureFrontDoor.Frontend]"), "shared-front-door").rule == "network:n/r"
    assert one(R + app("['*.azureedge.net']"), "shared-front-door").example == \
        "exfil0probe.azureedge.net"


def test_external_data_default_is_high_and_the_other_defaults_medium() -> None:
    found = [f for f in checks("") if f.check == "immutable-callouts-active"]
    assert [(f.severity, f.rule) for f in found] == [(Severity.HIGH, "immutable[5]"),
                                                     (Severity.MEDIUM, "immutable")]


def test_network_any_on_every_port_is_critical_and_on_one_port_high() -> None:
    assert one(R + net("['*']", "['*']", "[Any]"), "network-any").severity is Severity.CRITICAL
    assert one(R + net("['*']", "['443']"), "network-any").severity is Severity.HIGH
    assert one(R + net("[0.0.0.0/0]", "['*']", "[Any]"), "network-any").target == "0.0.0.0/0"


def test_guard_lift_behind_an_earlier_star_rule_is_not_reported_since_the_engine_keeps_it(
) -> None:
    text = R + net("['*']", "['80']", priority=100) + net(
        "[169.254.169.254/32]", "['80']", name="m", priority=200).replace(
        "network_rule_collections:\n", "")
    assert not [f for f in checks(text) if f.check == "guard-lifted"]
    assert one(R + net("[169.254.0.0/16]", "['80']"), "guard-lifted").severity is \
        Severity.CRITICAL
    assert one(R + net("[127.0.0.0/8]", "['80']"), "guard-lifted").severity is Severity.MEDIUM
    assert one(R + net("[10.1.0.0/16]", "['80']"), "guard-lifted").severity is Severity.LOW


def test_shadowed_deny_is_medium_and_names_the_rule_that_wins() -> None:
    finding = one(CASES["shadowed-rule"][0], "shadowed-rule")
    assert (finding.severity, finding.rule, finding.related) == (
        Severity.MEDIUM, "application:d/r", ("application:a/r",))


def test_redundant_allow_is_a_low_shadowed_rule() -> None:
    text = R + app("['.contoso.com']", priority=150, name="a") + app(
        "[www.contoso.com]", priority=300, name="b").replace("application_rule_collections:\n",
                                                             "")
    assert one(text, "shadowed-rule").severity is Severity.LOW


def test_rule_on_other_ports_or_narrower_sources_is_not_shadowed() -> None:
    base = R + app("['*.contoso.com']", "['https:443']", priority=150, name="a")
    other_port = base + app("[x.contoso.com]", "['https:8443']", priority=200, action="deny",
                            name="d").replace("application_rule_collections:\n", "")
    assert not [f for f in checks(other_port) if f.check == "shadowed-rule"]
    scoped = R + """
application_rule_collections:
  - name: a
    priority: 100
    rules: [{name: r, targets: ['*.contoso.com'], sources: [10.0.0.0/24]}]
  - name: d
    priority: 200
    action: deny
    rules: [{name: r, targets: [x.contoso.com]}]
"""
    assert not [f for f in checks(scoped) if f.check == "shadowed-rule"]


def test_overlap_reports_a_host_where_the_allow_wins() -> None:
    finding = one(CASES["allow-deny-overlap"][0], "allow-deny-overlap")
    assert (finding.rule, finding.example, finding.related) == (
        "application:d/r", "exfil0probe.contoso.com", ("application:a/r",))


def test_network_star_allow_opted_in_to_names_pre_empts_application_denies() -> None:
    text = R + net("['*']", "['*']", "[TCP]").replace(
        "ports: ['*']}", "ports: ['*'], match_resolved_names: true}") + app(
        "[evil.example]", action="deny")
    finding = one(text, "allow-deny-overlap")
    assert (finding.rule, finding.related) == ("application:c/r", ("network:n/r",))


def test_network_shadowing_and_overlap() -> None:
    text = R + """
network_rule_collections:
  - name: wide
    priority: 100
    rules: [{name: r, destinations: [20.0.0.0/8], protocols: [TCP], ports: ['1-65535']}]
  - name: deny
    priority: 200
    action: deny
    rules:
      - {name: inside, destinations: [20.1.0.0/16], protocols: [TCP], ports: ['22']}
      - {name: straddle, destinations: [16.0.0.0/5], protocols: [TCP], ports: ['22']}
"""
    found = {(f.check, f.rule) for f in checks(text)}
    assert ("shadowed-rule", "network:deny/inside") in found
    assert ("allow-deny-overlap", "network:deny/straddle") in found


def test_nonstandard_port_severity() -> None:
    assert one(R + app("[x.contoso.com]", "['https:*']"),
               "fqdn-nonstandard-port").severity is Severity.HIGH
    assert one(R + app("[x.database.windows.net]", "['mssql:1433']"),
               "fqdn-nonstandard-port").severity is Severity.LOW
    assert one(R + net("[git.contoso.com]", "['22']"),
               "fqdn-nonstandard-port").severity is Severity.MEDIUM


def test_unanchored_callout_gives_a_witness_the_regex_accepts() -> None:
    finding = one(CASES["callout-unanchored"][0], "callout-unanchored")
    assert finding.example == "https://myserver.database.windows.net.exfil0probe.example/"


def test_callout_reaching_storage_is_no_exposure_when_a_sep_limits_it() -> None:
    text = (R + r"callouts: [{callout_type: external_data, "
            r"uri_regex: '^https://[a-z0-9]+\.blob\.core\.windows\.net/', can_call: true}]")
    assert one(text, "wildcard-storage").severity is Severity.HIGH
    assert not [f for f in checks(text + SEP) if f.check == "wildcard-storage"]


def test_unresolved_reference_is_the_only_finding_and_names_the_problem() -> None:
    [finding] = checks(R + net("[NoSuchTag]"))
    assert finding.check == "unresolved-reference" and "NoSuchTag" in finding.why


def test_a_tight_restricted_policy_has_no_findings() -> None:
    tight = R + app("[mcr.microsoft.com, '*.data.mcr.microsoft.com', ml.azure.com]") + SEP
    assert checks(tight) == []


def test_findings_are_ordered_most_severe_first() -> None:
    severities = [f.severity for f in checks("allowed_fqdn_list: ['*']")]
    assert severities == sorted(severities, reverse=True)


def test_network_any_bypasses_application_denies_only_when_it_opts_in_to_names() -> None:
    deny = app("[pastebin.com]", action="deny", name="d")
    plain = R + net("['*']", "['*']") + deny
    opted = plain.replace("ports: ['*']}", "ports: ['*'], match_resolved_names: true}")
    assert "match_resolved_names" in opted

    def overlaps(text: str) -> set[str]:
        return {f.rule for f in checks(text) if f.check == "allow-deny-overlap"
                and "application:d/r" in (f.rule, *f.related)}

    assert not overlaps(plain)  # `*` decides IP literals and flows; names go to the rules
    assert overlaps(opted)
