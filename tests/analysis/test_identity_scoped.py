"""The analyser and workload identities: a rule scoped to identities is an exposure for
those callers only (marked so, and left out of what other callers are exposed to), it
neither shadows nor pre-empts a rule for other callers, a scoped allow is still found
by the engine probes, and a rule that applies to nobody is no exposure at all."""

from __future__ import annotations

from egressguard.analysis import Finding, analyze
from egressguard.engine import References
from egressguard.policy import load_policy_text

REFS = References(service_tags={"Storage.westeurope": ["20.60.0.0/16"]})


def findings(text: str) -> list[Finding]:
    return analyze(load_policy_text(text), REFS).findings


def of(found: list[Finding], check: str, rule: str) -> list[Finding]:
    return [f for f in found if f.check == check and f.rule == rule]


SCOPED_STORAGE = """
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: data
    priority: 100
    identities: [etl]
    rules:
      - {name: blobs, targets: ["*.blob.core.windows.net"], protocols: ["https:443"]}
  - name: web
    priority: 200
    rules:
      - {name: docs, targets: [docs.example.com], protocols: ["https:443"]}
"""


def test_a_scoped_exposure_is_marked_with_its_identities_and_only_theirs() -> None:
    report = analyze(load_policy_text(SCOPED_STORAGE), REFS)
    [storage] = of(report.findings, "wildcard-storage", "application:data/blobs")
    assert storage.identities == ("etl",)
    assert "only for identities etl" in storage.title
    assert storage.as_dict()["identities"] == ["etl"]
    # What a caller without that identity is exposed to: not the etl rule's paths.
    for who in (None, "web-frontend"):
        assert not of(report.for_identity(who).findings, "wildcard-storage",
                      "application:data/blobs")
    assert of(report.for_identity("etl").findings, "wildcard-storage",
              "application:data/blobs")


def test_storage_without_sep_is_found_through_a_scoped_rule_and_names_who_reaches_it(
        ) -> None:
    found = of(findings(SCOPED_STORAGE), "storage-without-sep", "application:data/blobs")
    assert [f.identities for f in found] == [("etl",)]


def test_a_rule_for_one_identity_does_not_shadow_the_same_rule_for_another() -> None:
    text = """
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: ci
    priority: 100
    identities: [ci]
    rules: [{name: pypi, targets: [pypi.org], protocols: ["https:443"]}]
  - name: batch
    priority: 200
    identities: [batch]
    rules: [{name: pypi, targets: [pypi.org], protocols: ["https:443"]}]
  - name: everyone
    priority: 300
    action: deny
    rules: [{name: pypi, targets: [pypi.org], protocols: ["https:443"]}]
network_rule_collections:
  - name: ci-db
    priority: 100
    identities: [ci]
    rules: [{name: db, destinations: [192.0.2.10/32], protocols: [TCP], ports: ["5432"]}]
  - name: batch-db
    priority: 200
    identities: [batch]
    rules: [{name: db, destinations: [192.0.2.10/32], protocols: [TCP], ports: ["5432"]}]
"""
    found = findings(text)
    assert not of(found, "shadowed-rule", "application:batch/pypi")
    assert not of(found, "shadowed-rule", "network:batch-db/db")
    # The unscoped deny is reached by everyone else; for ci and batch the allows win:
    # that overlap is real, and it is reported for those callers.
    assert not of(found, "shadowed-rule", "application:everyone/pypi")
    assert of(found, "allow-deny-overlap", "application:everyone/pypi")


def test_a_scoped_deny_is_not_pre_empted_by_an_allow_for_other_identities() -> None:
    text = """
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: open
    priority: 100
    identities: [ci]
    rules: [{name: github, targets: ["*.github.com"], protocols: ["https:443"]}]
  - name: closed
    priority: 200
    action: deny
    identities: [batch]
    rules: [{name: gist, targets: [gist.github.com], protocols: ["https:443"]}]
"""
    found = findings(text)
    for check in ("allow-deny-overlap", "shadowed-rule"):
        assert not of(found, check, "application:closed/gist"), check


def test_a_special_range_opened_for_one_identity_is_still_found() -> None:
    text = """
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: infra
    priority: 100
    identities: [agent]
    rules: [{name: meta, destinations: [169.254.169.254/32], protocols: [TCP],
             ports: ["80"]}]
"""
    [lifted] = of(findings(text), "guard-lifted", "network:infra/meta")
    assert lifted.identities == ("agent",)


def test_a_rule_that_applies_to_nobody_is_reported_dead_not_as_an_exposure() -> None:
    text = """
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: data
    priority: 100
    identities: [etl]
    rules:
      - {name: typo, targets: ["*"], protocols: ["https:443"], identities: [elt]}
"""
    found = [f for f in findings(text) if f.rule == "application:data/typo"]
    assert sorted((f.check, f.target) for f in found) == [
        ("shadowed-rule", "identities"), ("unresolved-reference", "elt")]
    assert "applies to no caller" in found[0].title
