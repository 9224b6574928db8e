"""What a target cannot express is warned and left out or narrowed, never widened."""

from __future__ import annotations

import json
from typing import Any

import yaml

from egressguard.export.azure import export_azure
from egressguard.export.cilium import export_cilium
from egressguard.export.kubernetes import export_kubernetes
from egressguard.export.squid import export_squid
from egressguard.policy import Policy

DENY_THEN_ALLOW = Policy.model_validate({
    "restrict_outbound_network_access": True,
    "application_rule_collections": [
        {"name": "block", "priority": 100, "action": "deny", "rules": [
            {"name": "evil", "targets": ["*.evil.com"]}]},
        {"name": "allow", "priority": 200, "rules": [
            {"name": "all-of-evil", "targets": [".evil.com"]},
            {"name": "good", "targets": ["good.org"]}]}]})


def _docs(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(text))


def test_cilium_leaves_out_an_allow_an_earlier_name_deny_covers() -> None:
    exported = export_cilium(DENY_THEN_ALLOW)
    egress = _docs(exported.text)[0]["spec"]["egress"]
    names = [s for r in egress for s in r.get("toFQDNs", [])]
    assert names == [{"matchName": "good.org"}]
    assert any("allow/all-of-evil" in w and "left out" in w for w in exported.warnings)


def test_cilium_unrestricted_policy_with_name_denies_falls_back_to_deny_by_default() -> None:
    policy = DENY_THEN_ALLOW.model_copy(update={"restrict_outbound_network_access": False})
    exported = export_cilium(policy)
    egress = _docs(exported.text)[0]["spec"]["egress"]
    assert not any(r.get("toCIDRSet") == [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]
                   for r in egress)
    assert any(w.startswith("default:") for w in exported.warnings)


def test_cilium_address_guard_is_an_egress_deny_lifted_only_for_named_cidrs() -> None:
    policy = Policy.model_validate({
        "restrict_outbound_network_access": True,
        "network_rule_collections": [{"name": "n", "rules": [
            {"name": "registry", "destinations": ["10.20.0.0/16"]},
            {"name": "api", "destinations": ["10.30.0.1"], "ports": [443],
             "protocols": ["tcp"]},
            {"name": "world", "destinations": ["*"], "ports": [443], "protocols": ["tcp"]}]}]})
    exported = export_cilium(policy)
    spec = _docs(exported.text)[0]["spec"]
    guard = {e["cidr"]: e.get("except") for e in spec["egressDeny"][0]["toCIDRSet"]}
    assert guard["10.0.0.0/8"] == ["10.20.0.0/16"], (
        "a hole for 10.30.0.1 would open it on every port `*` allows")
    assert any("network:n/api" in w and "keeps it denied" in w for w in exported.warnings)
    assert "169.254.0.0/16" in guard and guard["169.254.0.0/16"] is None, (
        "metadata stays denied although `*` allows 443")


def test_cilium_rule_with_an_unmapped_source_is_left_out_and_a_mapped_one_selected() -> None:
    policy = Policy.model_validate({
        "restrict_outbound_network_access": True,
        "application_rule_collections": [{"name": "c", "rules": [
            {"name": "batch", "targets": ["pypi.org"], "sources": ["10.1.0.0/16"]},
            {"name": "web", "targets": ["cdn.org"], "sources": ["10.2.0.0/16"]}]}]})
    exported = export_cilium(policy, identities={"10.1.0.0/16": {"app": "batch"}},
                             namespace="apps")
    docs = _docs(exported.text)
    assert [d["spec"]["endpointSelector"] for d in docs] == [{}, {"matchLabels": {
        "app": "batch"}}]
    assert [s for r in docs[1]["spec"]["egress"] for s in r.get("toFQDNs", [])] == [
        {"matchName": "pypi.org"}]
    assert not any("cdn.org" in str(d) for d in docs)
    assert any("10.2.0.0/16" in w for w in exported.warnings)


def test_kubernetes_cuts_the_guard_and_earlier_denies_out_of_allowed_blocks() -> None:
    policy = Policy.model_validate({
        "restrict_outbound_network_access": True,
        "network_rule_collections": [
            {"name": "deny", "priority": 100, "action": "deny", "rules": [
                {"name": "bad", "destinations": ["20.1.0.0/16"]}]},
            {"name": "allow", "priority": 200, "rules": [
                {"name": "azure", "destinations": ["20.0.0.0/8"], "ports": [443],
                 "protocols": ["tcp"]},
                {"name": "inside-bad", "destinations": ["20.1.2.0/24"]},
                {"name": "world", "destinations": ["0.0.0.0/0"], "protocols": ["udp"],
                 "ports": [53]}]}]})
    exported = export_kubernetes(policy, namespace="apps")
    egress = _docs(exported.text)[0]["spec"]["egress"]
    blocks = {e["to"][0]["ipBlock"]["cidr"]: e["to"][0]["ipBlock"].get("except")
              for e in egress}
    assert blocks["20.0.0.0/8"] == ["20.1.0.0/16"]
    assert "20.1.2.0/24" not in blocks
    assert "10.0.0.0/8" in blocks["0.0.0.0/0"] and "169.254.0.0/16" in blocks["0.0.0.0/0"]
    assert any("inside-bad" in w for w in exported.warnings)


def test_kubernetes_names_are_warnings_and_the_gateway_only_policy_is_emitted() -> None:
    exported = export_kubernetes(DENY_THEN_ALLOW, namespace="apps",
                                 gateway=[("10.0.0.10", 3128)], dns=[("10.0.0.10", 53)])
    docs = _docs(exported.text)
    assert docs[0]["spec"]["egress"] == [], "no names and no CIDRs: nothing allowed"
    gateway = docs[-1]
    assert gateway["metadata"]["name"] == "egressguard-gateway-only"
    assert gateway["spec"]["egress"] == [
        {"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}],
         "ports": [{"protocol": "TCP", "port": 3128}]},
        {"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}],
         "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]
    assert any("good" in w and "names" in w for w in exported.warnings)


def test_azure_keeps_rule_order_across_collection_and_rule_actions() -> None:
    policy = Policy.model_validate({
        "restrict_outbound_network_access": True,
        "application_rule_collections": [{"name": "mixed", "rules": [
            {"name": "a", "targets": ["a.com"]},
            {"name": "b", "targets": ["b.com"], "action": "deny"},
            {"name": "c", "targets": ["c.com"]}]}]})
    collections = json.loads(export_azure(policy).text)["resources"][0]["properties"][
        "ruleCollections"]
    app = [(c["action"]["type"], [r["name"] for r in c["rules"]], c["priority"])
           for c in collections if c["rules"][0]["ruleType"] == "ApplicationRule"]
    assert [(a, n) for a, n, _ in app] == [("Allow", ["a"]), ("Deny", ["b"]), ("Allow", ["c"])]
    assert [p for *_, p in app] == sorted(p for *_, p in app)


def test_azure_storage_endpoints_outside_a_service_endpoint_policy_stay_denied() -> None:
    policy = Policy.model_validate({
        "restrict_outbound_network_access": True,
        "service_endpoint_policies": [{"name": "sep", "resources": ["good"]}],
        "application_rule_collections": [{"name": "c", "rules": [
            {"name": "blobs", "targets": ["*.blob.core.windows.net"]},
            {"name": "other", "targets": ["pypi.org"]}]}]})
    exported = export_azure(policy)
    collections = json.loads(exported.text)["resources"][0]["properties"]["ruleCollections"]
    allowed = [t for c in collections if c["action"]["type"] == "Allow"
               for r in c["rules"] for t in r.get("targetFqdns", [])]
    assert allowed == ["pypi.org"]
    assert any("service endpoint" in w for w in exported.warnings)


def test_squid_denies_storage_accounts_outside_the_service_endpoint_policy() -> None:
    policy = Policy.model_validate({
        "restrict_outbound_network_access": True,
        "service_endpoint_policies": [{"name": "sep", "resources": ["good"]}],
        "application_rule_collections": [{"name": "c", "rules": [
            {"name": "blobs", "targets": ["*.blob.core.windows.net"]}]}]})
    text = export_squid(policy).text
    storage = text.index("http_access deny eg_storage !eg_storage_ok")
    assert storage < text.index("http_access allow eg_a1_re")
    assert "^(good)(-secondary)?" in text


def test_every_target_warns_about_report_only_and_callouts() -> None:
    policy = Policy.model_validate({
        "report_only": True,
        "callouts": [{"callout_type": "sql", "uri_regex": "db", "can_call": True}],
        "application_rule_collections": [{"name": "trial", "report_only": True, "rules": [
            {"name": "r", "targets": ["a.com"]}]}]})
    for export in (export_squid, export_cilium, export_kubernetes, export_azure):
        warnings = export(policy).warnings
        assert any("report-only" in w and w.startswith("policy") for w in warnings)
        assert any(w.startswith("callouts") for w in warnings)
        assert any(w.startswith("collection trial") for w in warnings)


def test_azure_puts_network_fqdns_after_every_address_rule_as_the_engine_decides() -> None:
    """An FQDN allow written before an address deny must not let the name's addresses
    through in Azure's strict rule order: the engine decides by address first."""
    policy = Policy.model_validate({
        "restrict_outbound_network_access": True,
        "network_rule_collections": [{"name": "n", "rules": [
            {"name": "name", "destinations": ["x.b.com"]},
            {"name": "bad", "action": "deny", "destinations": ["9.9.9.0/24"]}]}]})
    collections = json.loads(export_azure(policy).text)["resources"][0]["properties"][
        "ruleCollections"]
    order = [(c["name"], c["rules"][0]["name"]) for c in collections]
    assert order.index(("n-deny", "bad")) < order.index(("n-fqdns-allow", "name"))


def test_kubernetes_never_writes_an_empty_to_which_would_allow_everything() -> None:
    policy = Policy.model_validate({"network_rule_collections": [{
        "name": "n", "action": "deny", "rules": [
            {"name": "all", "destinations": ["0.0.0.0/0", "::/0"]}]}]})
    exported = export_kubernetes(policy)
    assert all(rule.get("to") for doc in _docs(exported.text)
               for rule in doc["spec"]["egress"])
