"""Spec section 4 steps 5-7 and section 6: application rules, the allowed FQDN list,
defaults, report-only mode and service endpoint policies."""

from __future__ import annotations

import pytest

from egressguard.engine import CompileError, Kind, Layer, References, Request, Verdict
from tests.engine.helpers import callout, connect, snapshot, url

APP = """
restrict_outbound_network_access: true
application_rule_collections:
  - name: web
    priority: 300
    rules:
      - {name: plain, targets: [updates.example], protocols: ['http:80']}
      - {name: tls, targets: [api.example], protocols: ['https:443']}
      - {name: any-tls-port, targets: [alt.example], protocols: ['https:*']}
      - {name: sql, targets: [db.example], protocols: ['mssql:1433']}
      - {name: scoped, targets: [internal.example], sources: [10.240.0.0/16]}
"""


def test_http_rule_does_not_allow_https_and_vice_versa() -> None:
    snap = snapshot(APP)
    assert url(snap, "http://updates.example/pkg").rule == "application:web/plain"
    assert not url(snap, "https://updates.example/pkg").allowed
    assert url(snap, "https://api.example/v1").rule == "application:web/tls"
    assert not url(snap, "http://api.example/v1").allowed


def test_rule_ports_must_match() -> None:
    snap = snapshot(APP)
    assert not url(snap, "https://api.example:8443/").allowed
    assert url(snap, "https://alt.example:8443/").allowed  # https:* is any port
    assert not url(snap, "http://alt.example/").allowed


def test_connect_is_matched_by_port() -> None:
    snap = snapshot(APP)
    assert connect(snap, "api.example", 443).allowed
    assert not connect(snap, "api.example", 22).allowed
    assert connect(snap, "updates.example", 80).allowed
    assert connect(snap, "db.example", 1433).rule == "application:web/sql"
    assert connect(snap, "alt.example", 9443).allowed


def test_dns_question_is_allowed_for_a_name_some_rule_covers() -> None:
    snap = snapshot(APP)
    for port in (None, 53):
        decision = snap.decide(Request(kind=Kind.DNS, host="api.example.", port=port,
                                       protocol="udp"))
        assert (decision.verdict, decision.layer) == (Verdict.ALLOW, Layer.APPLICATION)
    assert not snap.decide(Request(kind=Kind.DNS, host="other.example")).allowed


def test_rule_sources_scope_who_may_use_it() -> None:
    snap = snapshot(APP)
    assert connect(snap, "internal.example", 443, source="10.240.3.4").allowed
    assert not connect(snap, "internal.example", 443, source="10.241.3.4").allowed
    assert not connect(snap, "internal.example", 443).allowed


def test_default_protocols_are_http_80_and_https_443() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        application_rule_collections:
          - name: c
            rules: [{name: r, targets: [site.example]}]
        """)
    assert url(snap, "http://site.example/").allowed
    assert url(snap, "https://site.example/").allowed
    assert not url(snap, "https://site.example:444/").allowed


def test_first_match_by_collection_priority_then_rule_order() -> None:
    snap = snapshot("""
        application_rule_collections:
          - name: allow-late
            priority: 900
            rules: [{name: all-example, targets: ['*.example']}]
          - name: deny-early
            priority: 100
            action: deny
            rules:
              - {name: exfil, targets: [paste.example]}
              - {name: exfil-sub, targets: ['.dump.example']}
        """)
    assert connect(snap, "paste.example").rule == "application:deny-early/exfil"
    assert connect(snap, "a.dump.example").rule == "application:deny-early/exfil-sub"
    assert connect(snap, "dump.example").rule == "application:deny-early/exfil-sub"
    assert connect(snap, "docs.example").rule == "application:allow-late/all-example"


def test_deny_rule_denies_even_when_unrestricted() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: false
        application_rule_collections:
          - name: block
            action: deny
            rules: [{name: paste, targets: [pastebin.com]}]
        """)
    decision = url(snap, "https://pastebin.com/raw/x")
    assert (decision.verdict, decision.layer, decision.rule) == (
        Verdict.DENY, Layer.APPLICATION, "application:block/paste")
    assert decision.reason == "pastebin.com:443 denied by application rule block/paste"
    assert url(snap, "https://example.org/").layer is Layer.DEFAULT


def test_rule_action_overrides_collection_action() -> None:
    snap = snapshot("""
        application_rule_collections:
          - name: mixed
            action: deny
            rules: [{name: ok, targets: [ok.example], action: allow}]
        """)
    assert connect(snap, "ok.example").allowed


def test_default_is_deny_when_restricted_and_allow_when_not() -> None:
    closed = url(snapshot("restrict_outbound_network_access: true"), "https://x.example/")
    opened = url(snapshot("restrict_outbound_network_access: false"), "https://x.example/")
    assert (closed.verdict, closed.layer, closed.rule) == (Verdict.DENY, Layer.DEFAULT,
                                                            "default")
    assert (opened.verdict, opened.layer) == (Verdict.ALLOW, Layer.DEFAULT)


def test_allowed_fqdn_list_covers_ports_80_and_443_only() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        allowed_fqdn_list: [my-eventhub.servicebus.windows.net]
        """)
    for port in (80, 443):
        decision = connect(snap, "my-eventhub.servicebus.windows.net", port)
        assert (decision.verdict, decision.layer) == (Verdict.ALLOW, Layer.ALLOWED_FQDN)
    assert not connect(snap, "my-eventhub.servicebus.windows.net", 5671).allowed
    assert not connect(snap, "other.servicebus.windows.net", 443).allowed
    dns = snap.decide(Request(kind=Kind.DNS, host="my-eventhub.servicebus.windows.net",
                              port=53))
    assert dns.layer is Layer.ALLOWED_FQDN


def test_fqdn_tag_expands_from_references() -> None:
    refs = References(fqdn_tags={"AzureKubernetesService": ["mcr.microsoft.com",
                                                            "*.data.mcr.microsoft.com"]})
    snap = snapshot("""
        restrict_outbound_network_access: true
        application_rule_collections:
          - name: aks
            rules: [{name: tag, fqdn_tags: [AzureKubernetesService]}]
        """, refs)
    assert connect(snap, "westeurope.data.mcr.microsoft.com").allowed
    with pytest.raises(CompileError, match="NoSuchTag"):
        snapshot("""
            application_rule_collections:
              - name: aks
                rules: [{name: tag, fqdn_tags: [NoSuchTag]}]
            """)


def test_network_rule_opted_in_to_names_allows_a_name_by_its_addresses() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        network_rule_collections:
          - name: net
            rules: [{name: cdn, destinations: [20.10.0.0/16], ports: ['443'],
                     match_resolved_names: true}]
        """)
    decision = connect(snap, "cdn.example", 443, "20.10.1.1")
    assert (decision.verdict, decision.layer) == (Verdict.ALLOW, Layer.NETWORK)
    # Every address must be allowed for the network layer to decide.
    assert connect(snap, "cdn.example", 443, "20.10.1.1", "20.11.1.1").layer is Layer.DEFAULT


# -- report-only -------------------------------------------------------------------------

def test_report_only_policy_records_the_deny_and_permits() -> None:
    snap = snapshot("restrict_outbound_network_access: true\nreport_only: true")
    decision = url(snap, "https://x.example/")
    assert (decision.verdict, decision.report_only, decision.permitted) == (
        Verdict.DENY, True, True)
    assert not decision.allowed


def test_report_only_policy_still_permits_guard_denials_it_reports() -> None:
    decision = url(snapshot("report_only: true"), "http://169.254.169.254/")
    assert (decision.verdict, decision.layer, decision.report_only) == (
        Verdict.DENY, Layer.GUARD, True)


def test_report_only_collection_deny_is_recorded_but_permitted() -> None:
    snap = snapshot("""
        application_rule_collections:
          - name: trial
            action: deny
            report_only: true
            rules: [{name: paste, targets: [pastebin.com]}]
        """)
    decision = connect(snap, "pastebin.com")
    assert (decision.verdict, decision.rule, decision.report_only, decision.permitted) == (
        Verdict.DENY, "application:trial/paste", True, True)


def test_report_only_collection_never_loosens_enforcement() -> None:
    # A report-only deny in front of an enforced deny must not turn it into a permit.
    snap = snapshot("""
        restrict_outbound_network_access: true
        application_rule_collections:
          - name: trial
            priority: 100
            action: deny
            report_only: true
            rules: [{name: paste, targets: [pastebin.com]}]
          - name: trial-allow
            priority: 150
            report_only: true
            rules: [{name: all, targets: ['*']}]
        """)
    decision = connect(snap, "pastebin.com")
    assert (decision.verdict, decision.layer, decision.permitted) == (
        Verdict.DENY, Layer.DEFAULT, False)
    # Nor does a report-only allow open anything.
    assert not connect(snap, "anything.example").permitted


def test_report_only_network_collection_is_recorded_but_permitted() -> None:
    snap = snapshot("""
        network_rule_collections:
          - name: trial
            action: deny
            report_only: true
            rules: [{name: r, destinations: [45.0.0.0/8]}]
        """)
    decision = snap.decide(Request(kind=Kind.FLOW, host="45.1.1.1", port=443))
    assert (decision.verdict, decision.report_only, decision.permitted) == (
        Verdict.DENY, True, True)


# -- service endpoint policies (seed 004) ------------------------------------------------

SEP_REFS = References(
    storage_aliases={"/services/Azure/MachineLearning": ["amlprod*", "azureml*"]},
    storage_accounts={"teamdata": "/subscriptions/S1/resourceGroups/rg/providers/"
                                  "Microsoft.Storage/storageAccounts/teamdata",
                      "otherteam": "/subscriptions/S2/resourceGroups/rg/providers/"
                                   "Microsoft.Storage/storageAccounts/otherteam"})
SEP = """
restrict_outbound_network_access: true
application_rule_collections:
  - name: storage
    rules: [{name: blobs, targets: ['*.blob.core.windows.net', '*.queue.core.windows.net',
                                    '*.blob.core.chinacloudapi.cn']}]
service_endpoint_policies:
  - name: ws
    resources:
      - /subscriptions/S0/resourceGroups/RG/providers/Microsoft.Storage/storageAccounts/mystore
      - plainname
      - /subscriptions/S1
    aliases: [/services/Azure/MachineLearning]
"""


@pytest.mark.parametrize("host", [
    "mystore.blob.core.windows.net",              # listed by resource id
    "MyStore.queue.core.windows.net",
    "mystore-secondary.blob.core.windows.net",    # read-access secondary
    "plainname.blob.core.windows.net",            # listed by name
    "teamdata.blob.core.windows.net",             # in a listed subscription
    "amlprod123.blob.core.windows.net",           # covered by the alias
    "mystore.blob.core.chinacloudapi.cn",         # sovereign suffix
])
def test_service_endpoint_policy_allows_listed_accounts(host: str) -> None:
    decision = connect(snapshot(SEP, SEP_REFS), host)
    assert decision.allowed, decision.reason


@pytest.mark.parametrize("host", [
    "attacker.blob.core.windows.net",
    "otherteam.blob.core.windows.net",            # another subscription
    "attacker-secondary.blob.core.windows.net",
    "attacker.blob.core.chinacloudapi.cn",
])
def test_other_storage_account_is_denied_even_with_an_app_rule_for_all_blobs(
        host: str) -> None:
    decision = connect(snapshot(SEP, SEP_REFS), host)
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.SERVICE_ENDPOINT)


def test_service_endpoint_policy_beats_a_network_rule_for_the_storage_tag() -> None:
    refs = References(service_tags={"Storage.westeurope": ["20.60.0.0/16"]},
                      storage_aliases=SEP_REFS.storage_aliases,
                      storage_accounts=SEP_REFS.storage_accounts)
    snap = snapshot(SEP + """
network_rule_collections:
  - name: nsg
    rules: [{name: storage, destinations: [Storage.westeurope], ports: ['443'],
             match_resolved_names: true}]
""", refs)
    assert connect(snap, "attacker.blob.core.windows.net", 443, "20.60.1.1").layer is (
        Layer.SERVICE_ENDPOINT)
    assert connect(snap, "mystore.blob.core.windows.net", 443, "20.60.1.1").layer is (
        Layer.NETWORK)


def test_several_service_endpoint_policies_combine_as_a_union() -> None:
    snap = snapshot("""
        service_endpoint_policies:
          - {name: a, resources: [one]}
          - {name: b, resources: [two]}
        """)
    assert connect(snap, "one.blob.core.windows.net").allowed
    assert connect(snap, "two.dfs.core.windows.net").allowed
    assert not connect(snap, "three.file.core.windows.net").allowed


def test_non_storage_hosts_are_untouched_by_service_endpoint_policies() -> None:
    snap = snapshot("service_endpoint_policies: [{name: a, resources: [one]}]")
    assert connect(snap, "blob.core.windows.net.evil.example").allowed
    assert connect(snap, "example.org").allowed


def test_unknown_alias_is_a_compile_error() -> None:
    with pytest.raises(CompileError, match="/services/Azure/Nope"):
        snapshot("service_endpoint_policies: [{name: a, aliases: [/services/Azure/Nope]}]")


# -- the decision memo -------------------------------------------------------------------

def test_repeated_requests_get_the_same_decision_and_the_memo_stays_bounded() -> None:
    from egressguard.engine import snapshot as snapshot_module

    snap = snapshot(APP)
    first = connect(snap, "api.example")
    assert connect(snap, "api.example") == first
    assert connect(snap, "API.example.") == first  # another spelling, same answer
    # Addresses and sources are never memoised: the guard sees every call.
    assert connect(snap, "api.example", 443, "169.254.169.254").layer is Layer.GUARD
    for i in range(snapshot_module._MEMO_SIZE + 10):
        snap.decide(Request(kind=Kind.CONNECT, host=f"h{i}.random.example", port=443))
    assert len(snap._memo_connect) <= snapshot_module._MEMO_SIZE
    assert connect(snap, "api.example") == first


def test_external_data_callout_to_an_unlisted_storage_account_is_denied_by_the_sep() -> None:
    snap = snapshot("service_endpoint_policies: [{name: sep, resources: [mystore]}]")
    exfil = callout(snap, "https://attacker.blob.core.windows.net/c", "external_data")
    listed = callout(snap, "https://mystore.blob.core.windows.net/c", "external_data")
    assert (exfil.verdict, exfil.layer) == (Verdict.DENY, Layer.SERVICE_ENDPOINT)
    assert (listed.verdict, listed.layer) == (Verdict.ALLOW, Layer.IMMUTABLE)
