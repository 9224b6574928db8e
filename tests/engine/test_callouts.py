"""Spec section 4 step 3: callout requests and the two callout layers (seed 000)."""

from __future__ import annotations

import json

import pytest

from egressguard.engine import Kind, Layer, Request, Verdict
from egressguard.policy import CalloutRule, Policy
from egressguard.policy.defaults import IMMUTABLE_CALLOUT_ROWS
from tests.engine.helpers import callout, snapshot

SEED_000_IMMUTABLE = json.loads(r"""[
   {"CalloutType":"kusto","CalloutUriRegex":"[a-z0-9]{3,22}\\.(\\w+\\.)?kusto(mfa)?\\.windows\\.net/?$","CanCall":true},
   {"CalloutType":"kusto","CalloutUriRegex":"//[a-z0-9]{3,22}\\.[a-z0-9-]{1,50}\\.(kusto\\.azuresynapse|kustodev\\.azuresynapse-dogfood)\\.net/?$","CanCall":true},
   {"CalloutType":"kusto","CalloutUriRegex":"^https://([A-Za-z0-9]+\\.)?(ade|adx)\\.(int\\.)?(applicationinsights|loganalytics|monitor)\\.(io|azure(\\.com|\\.us|\\.cn))/","CanCall":true},
   {"CalloutType":"sql","CalloutUriRegex":"[a-z0-9][a-z0-9\\-]{0,61}[a-z0-9]?\\.database\\.windows\\.net/?$","CanCall":true},
   {"CalloutType":"sql","CalloutUriRegex":"[a-z0-9-]{0,61}?(-ondemand)?\\.sql\\.azuresynapse(-dogfood)?\\.net/?$","CanCall":true},
   {"CalloutType":"external_data","CalloutUriRegex":".*","CanCall":true},
   {"CalloutType":"azure_digital_twins","CalloutUriRegex":"[A-Za-z0-9\\-]{3,63}\\.api\\.[A-Za-z0-9]+\\.digitaltwins\\.azure\\.net/?$","CanCall":true}
]""")


def test_immutable_layer_is_seed_000_verbatim() -> None:
    assert [rule.to_kusto() for rule in Policy().immutable_callouts] == SEED_000_IMMUTABLE
    assert len(IMMUTABLE_CALLOUT_ROWS) == 7


def test_kusto_json_round_trips_losslessly() -> None:
    rules = [CalloutRule.model_validate(row) for row in SEED_000_IMMUTABLE]
    assert [rule.to_kusto() for rule in rules] == SEED_000_IMMUTABLE
    assert json.loads(json.dumps([r.to_kusto() for r in rules])) == SEED_000_IMMUTABLE
    snake = [CalloutRule.model_validate(r.model_dump()) for r in rules]
    assert snake == rules


@pytest.mark.parametrize(("uri", "callout_type", "index"), [
    ("https://help.kusto.windows.net", "kusto", 0),
    ("https://mycluster.westeurope.kusto.windows.net/", "kusto", 0),
    ("https://wsp.pool.kusto.azuresynapse.net", "kusto", 1),
    ("https://ade.applicationinsights.io/subscriptions/x", "kusto", 2),
    ("https://myserver.database.windows.net", "sql", 3),
    ("sql://myserver.database.windows.net", "SQL", 3),  # types compare case-insensitively
    ("https://ws-ondemand.sql.azuresynapse.net", "sql", 4),
    ("https://anything.example.org/data.csv", "external_data", 5),
    ("https://twin1.api.weu.digitaltwins.azure.net", "azure_digital_twins", 6),
])
def test_immutable_layer_allows_its_entries_while_unrestricted(
        uri: str, callout_type: str, index: int) -> None:
    decision = callout(snapshot(), uri, callout_type)
    assert (decision.verdict, decision.layer, decision.rule) == (
        Verdict.ALLOW, Layer.IMMUTABLE, f"immutable[{index}]")


def test_callout_of_another_type_does_not_use_an_entry() -> None:
    decision = callout(snapshot(), "https://myserver.database.windows.net", "kusto")
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.DEFAULT)


def test_restricting_outbound_access_drops_the_immutable_layer() -> None:
    snap = snapshot("restrict_outbound_network_access: Enabled")
    decision = callout(snap, "https://myserver.database.windows.net", "sql")
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.DEFAULT)


def test_blocked_callout_names_the_uri_in_data_explorer_wording() -> None:
    snap = snapshot("restrict_outbound_network_access: true")
    decision = callout(snap, "https://exfil.blob.core.windows.net/c?sig=x", "external_data")
    assert decision.reason.startswith(
        "Callout to 'https://exfil.blob.core.windows.net/c' is not allowed by the callout "
        "policy")


def test_can_call_false_wins_over_true_in_either_layer() -> None:
    snap = snapshot(r"""
        callouts:
          - {CalloutType: external_data, CalloutUriRegex: 'evil\.example', CanCall: false}
          - {CalloutType: external_data, CalloutUriRegex: '.*', CanCall: true}
        """)
    blocked = callout(snap, "https://evil.example/x", "external_data")
    assert (blocked.verdict, blocked.layer, blocked.rule) == (
        Verdict.DENY, Layer.CLUSTER, "cluster[0]")
    assert "is not allowed by the callout policy" in blocked.reason
    # Other URIs: the immutable `.*` entry allows (first matching true entry).
    assert callout(snap, "https://fine.example/x", "external_data").allowed


def test_wildcard_type_entry_applies_to_every_type() -> None:
    snap = snapshot(r"""
        restrict_outbound_network_access: true
        callouts: [{callout_type: '*', uri_regex: 'partner\.example', can_call: true}]
        """)
    for callout_type in ("sql", "webapi", "kusto", "cosmosdb"):
        decision = callout(snap, "https://db.partner.example", callout_type)
        assert (decision.verdict, decision.layer) == (Verdict.ALLOW, Layer.CLUSTER)


def test_cluster_layer_applies_while_restricted() -> None:
    snap = snapshot(r"""
        restrict_outbound_network_access: true
        callouts:
          - {callout_type: sql, uri_regex: 'myserver\.database\.windows\.net', can_call: true}
        """)
    assert callout(snap, "https://myserver.database.windows.net", "sql").layer is Layer.CLUSTER
    assert not callout(snap, "https://other.database.windows.net", "sql").allowed


def test_no_matching_entry_denies_even_when_unrestricted() -> None:
    decision = callout(snapshot(), "https://api.example.com/hook", "webapi")
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.DEFAULT)
    assert "is not allowed by the callout policy" in decision.reason


@pytest.mark.parametrize("callout_type", [
    "kusto", "sql", "mysql", "postgresql", "azure_digital_twins", "cosmosdb",
    "sandbox_artifacts", "external_data", "azure_openai", "genevametrics"])
def test_allowed_fqdn_covers_every_callout_type_while_restricted(callout_type: str) -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        allowed_fqdn_list: [adedicated.sql.azuresynapse.net]
        """)
    decision = callout(snap, "https://adedicated.sql.azuresynapse.net", callout_type)
    assert (decision.verdict, decision.layer) == (Verdict.ALLOW, Layer.ALLOWED_FQDN)


def test_allowed_fqdn_does_not_cover_webapi() -> None:
    snap = snapshot("""
        restrict_outbound_network_access: true
        allowed_fqdn_list: [api.partner.example]
        """)
    decision = callout(snap, "https://api.partner.example/hook", "webapi")
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.DEFAULT)


def test_cluster_can_call_false_beats_the_allowed_fqdn_list() -> None:
    snap = snapshot(r"""
        restrict_outbound_network_access: true
        allowed_fqdn_list: [adedicated.sql.azuresynapse.net]
        callouts:
          - {callout_type: sql, uri_regex: 'adedicated', can_call: false}
        """)
    decision = callout(snap, "https://adedicated.sql.azuresynapse.net", "sql")
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.CLUSTER)
    # Other types still reach it through the list.
    assert callout(snap, "https://adedicated.sql.azuresynapse.net", "kusto").allowed


def test_regex_is_searched_unanchored_in_the_normalised_uri() -> None:
    snap = snapshot(r"""
        restrict_outbound_network_access: true
        callouts:
          - {callout_type: webapi, uri_regex: 'hooks\.example\.com:8443/v1', can_call: true}
          - {callout_type: kusto, uri_regex: '^https://adx\.example\.com/$', can_call: true}
        """)
    # Userinfo, query and fragment are not in the searched text; host is normalised.
    assert callout(snap, "https://u:p@HOOKS.example.com:8443/v1/x?a#b", "webapi").allowed
    assert not callout(snap, "https://hooks.example.com/v1", "webapi").allowed
    # An anchored regex sees `scheme://host/` (the path is `/` when empty).
    assert callout(snap, "https://ADX.example.com", "kusto").allowed
    assert not callout(snap, "https://evil.com/?https://adx.example.com/", "kusto").allowed


def test_query_string_cannot_smuggle_an_allowed_host() -> None:
    snap = snapshot(r"""
        restrict_outbound_network_access: true
        callouts:
          - {callout_type: sql, uri_regex: 'good\.database\.windows\.net/?$', can_call: true}
        """)
    decision = callout(snap, "https://evil.example/?x=good.database.windows.net", "sql")
    assert not decision.allowed


def test_callout_to_the_metadata_address_is_denied_by_the_guard_despite_external_data() -> None:
    decision = callout(snapshot(), "http://169.254.169.254/metadata", "external_data")
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.GUARD)
    decision = callout(snapshot(), "sql://0xa9fea9fe:1433", "external_data")
    assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.GUARD)


def test_bare_host_callout_is_matched_as_an_https_uri() -> None:
    snap = snapshot()
    decision = snap.decide(Request(kind=Kind.CALLOUT, host="MyServer.database.windows.net",
                                   callout_type="sql"))
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "immutable[3]")


def test_thousand_regex_layer_decides_by_type() -> None:
    rows = "\n".join(
        f"  - {{callout_type: {'sql' if i % 2 else 'kusto'}, "
        f"uri_regex: '^https://h{i}\\.example\\.org/', can_call: true}}"
        for i in range(1000))
    snap = snapshot("restrict_outbound_network_access: true\ncallouts:\n" + rows)
    assert callout(snap, "https://h7.example.org/", "sql").rule == "cluster[7]"
    assert not callout(snap, "https://h7.example.org/", "kusto").allowed
    assert callout(snap, "https://h8.example.org/", "kusto").rule == "cluster[8]"
