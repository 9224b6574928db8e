"""`explain`: the deciding layer and rule of a denial, the smallest change that would allow
it (checked against the compiled new policy) and the risk findings only that change adds."""

from __future__ import annotations

from egressguard.analysis.explain import explain
from egressguard.catalog import references
from egressguard.engine.request import Kind, Request, build_request
from egressguard.policy import load_policy_text

POLICY = load_policy_text("""\
restrict_outbound_network_access: true
application_rule_collections:
  - name: base
    rules:
      - {name: mcr, targets: [mcr.microsoft.com], protocols: ['https:443']}
  - name: blocked
    action: deny
    priority: 100
    rules:
      - {name: paste, targets: [pastebin.com]}
""", "policy.yaml")


def _explain(url: str, policy=POLICY):  # type: ignore[no-untyped-def]
    return explain(policy, build_request(url), references(), label="policy.yaml")


def test_a_default_denial_gets_one_exact_rule_that_allows_it_and_no_new_risk() -> None:
    e = _explain("https://api.example.com/v1")
    assert (e.decision.layer.value, e.decision.rule) == ("default", "default")
    assert e.draft is not None and e.draft.permits
    assert "+    - api.example.com" in e.draft.diff
    assert "+    - https:443" in e.draft.diff
    assert "*" not in "".join(ln for ln in e.draft.diff.splitlines() if ln.startswith("+"))
    assert e.draft.diff.startswith("--- policy.yaml\n+++ proposed\n")
    assert e.findings == []


def test_a_deny_rule_still_wins_so_the_change_is_not_enough_and_the_finding_says_why() -> None:
    e = _explain("https://pastebin.com/")
    assert e.decision.rule == "application:blocked/paste"
    assert e.draft is not None and not e.draft.permits
    assert "denied by application rule blocked/paste" in e.draft.verdict
    assert [f.check for f in e.findings] == ["shadowed-rule"]


def test_allowing_a_storage_account_raises_the_storage_finding() -> None:
    e = _explain("https://acct1data.blob.core.windows.net/")
    assert e.draft is not None and e.draft.permits
    assert "storage-without-sep" in [f.check for f in e.findings]


def test_allowing_the_curated_registry_raises_its_finding() -> None:
    e = _explain("https://viennaglobal.azurecr.io/v2/")
    assert [(f.check, f.severity.label) for f in e.findings] == [("curated-registry",
                                                                  "medium")]


def test_findings_the_policy_already_has_are_not_reported_as_new() -> None:
    leaky = POLICY.model_copy(update={"allowed_fqdn_list": ["acct9data.blob.core.windows.net"]})
    assert "storage-without-sep" not in [f.check for f in _explain(
        "https://acct1data.blob.core.windows.net/", leaky).findings]


def test_an_allowed_request_needs_no_change() -> None:
    e = _explain("https://mcr.microsoft.com/")
    assert not e.denied and e.draft is None
    assert e.as_dict()["change"] is None


def test_an_address_or_a_dns_question_gets_the_reason_instead_of_a_change() -> None:
    by_ip = explain(POLICY, build_request("203.0.113.7:443", kind="connect"), references(),
                    label="p")
    assert by_ip.draft is None and "network rule" in by_ip.cannot
    dns = explain(POLICY, Request(kind=Kind.DNS, host="api.example.com", port=53,
                                  protocol="udp"), references(), label="p")
    assert dns.draft is None and "only HTTP and CONNECT" in dns.cannot
