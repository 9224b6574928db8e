"""Pattern and port translation, table-tested per target: the apex, multi-label wildcards,
label globs and ports mean in the target exactly what they mean in egressguard."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from egressguard.analysis.patterns import matches
from egressguard.export.azure import export_azure, target_fqdns
from egressguard.export.cilium import export_cilium, fqdn_selectors
from egressguard.export.squid import host_acl
from egressguard.policy import Policy

HOSTS = ["b.com", "x.b.com", "y.x.b.com", "evil-b.com", "b.com.evil.net", "md-12.b.com",
         "md-1.x.b.com", "md.b.com", "c.com"]


@pytest.mark.parametrize(("pattern", "selectors"), [
    ("a.b.com", [{"matchName": "a.b.com"}]),
    (".b.com", [{"matchName": "b.com"}, {"matchPattern": "**.b.com"}]),
    ("*.b.com", [{"matchPattern": "**.b.com"}]),  # Cilium's `*.` is one label only
    ("md-*.b.com", [{"matchPattern": "md-*.b.com"}]),  # a glob within one label
    ("*", [{"matchPattern": "*"}]),
    ("8.8.8.8", None),
])
def test_cilium_selectors_match_what_the_pattern_matches(pattern: str, selectors: object
                                                         ) -> None:
    assert fqdn_selectors(pattern) == selectors


def _cilium_matches(selector: dict[str, str], host: str) -> bool:
    """Cilium's documented semantics: `*` one label's characters, `**.` one or more
    labels, matchName exact (both case-insensitive)."""
    if "matchName" in selector:
        return host == selector["matchName"]
    pattern = selector["matchPattern"]
    if pattern == "*":
        return True
    regex = re.escape(pattern).replace(r"\*\*\.", "(?:[-a-z0-9_]+\\.)+").replace(
        r"\*", "[-a-z0-9_]*")
    return re.fullmatch(regex, host) is not None


@pytest.mark.parametrize("pattern", ["b.com", ".b.com", "*.b.com", "md-*.b.com", "*",
                                     "x.b.com", "*.x.b.com"])
@pytest.mark.parametrize("host", HOSTS)
def test_cilium_translation_agrees_with_the_engine_matcher(pattern: str, host: str) -> None:
    selectors = fqdn_selectors(pattern)
    assert selectors is not None
    assert any(_cilium_matches(s, host) for s in selectors) == matches(pattern, host)


@pytest.mark.parametrize(("pattern", "targets"), [
    ("a.b.com", ["a.b.com"]),
    (".b.com", ["b.com", "*.b.com"]),  # the apex and every subdomain
    ("*.b.com", ["*.b.com"]),
    ("*", ["*"]),
    ("md-*.b.com", None),  # Azure has no label globs
    ("8.8.8.8", None),
])
def test_azure_target_fqdns(pattern: str, targets: object) -> None:
    assert target_fqdns(pattern) == targets


@pytest.mark.parametrize("pattern", ["b.com", ".b.com", "*.b.com", "md-*.b.com", "*.x.b.com"])
@pytest.mark.parametrize("host", HOSTS)
def test_squid_acl_matches_what_the_pattern_matches(pattern: str, host: str) -> None:
    kind, value = host_acl(pattern) or ("", "")
    if kind.startswith("dstdomain"):  # Squid: `.x` is x and below, else exact
        got = host == value[1:] or host.endswith(value) if value.startswith(".") \
            else host == value
    else:  # POSIX ERE; these use only what Python's re reads the same way
        got = re.search(value, host, re.IGNORECASE) is not None
    assert got == matches(pattern, host)


def _policy(targets: list[str], protocols: list[str], action: str = "allow") -> Policy:
    return Policy.model_validate({
        "restrict_outbound_network_access": True,
        "application_rule_collections": [{"name": "c", "action": action, "rules": [
            {"name": "r", "targets": targets, "protocols": protocols}]}]})


@pytest.mark.parametrize(("protocols", "ports"), [
    (["https:443"], [{"port": "443", "protocol": "TCP"}]),
    (["http:80", "https:443", "http:8080"], [{"port": "80", "protocol": "TCP"},
                                             {"port": "443", "protocol": "TCP"},
                                             {"port": "8080", "protocol": "TCP"}]),
    (["http:*"], [{"port": "1", "endPort": 65535, "protocol": "TCP"}]),
])
def test_cilium_ports_are_the_rule_ports_over_tcp(protocols: list[str], ports: object) -> None:
    doc = next(yaml.safe_load_all(export_cilium(_policy([".b.com"], protocols)).text))
    fqdn_rules = [r for r in doc["spec"]["egress"] if "toFQDNs" in r]
    assert fqdn_rules == [{"toFQDNs": [{"matchName": "b.com"}, {"matchPattern": "**.b.com"}],
                           "toPorts": [{"ports": ports}]}]
    dns = doc["spec"]["egress"][0]["toPorts"][0]["rules"]["dns"]
    assert dns == [{"matchName": "b.com"}, {"matchPattern": "**.b.com"}], (
        "the DNS proxy answers only the names the policy can allow")


@pytest.mark.parametrize(("protocols", "azure", "warned"), [
    (["https:443", "http:80"], [{"protocolType": "Https", "port": 443},
                                {"protocolType": "Http", "port": 80}], False),
    (["mssql:1433"], [{"protocolType": "Mssql", "port": 1433}], False),
    (["https:8443", "http:*"], [{"protocolType": "Https", "port": 8443}], True),
])
def test_azure_protocols_and_ports(protocols: list[str], azure: object, warned: bool) -> None:
    exported = export_azure(_policy(["a.b.com"], protocols))
    rules = [r for c in json.loads(exported.text)["resources"][0]["properties"][
        "ruleCollections"] for r in c["rules"] if r["ruleType"] == "ApplicationRule"]
    assert [r["protocols"] for r in rules] == [azure]
    assert any("http:*" in w for w in exported.warnings) == warned


def test_azure_writes_a_label_glob_deny_wider_and_leaves_a_glob_allow_out() -> None:
    deny = export_azure(_policy(["md-*.b.com"], ["https:443"], "deny"))
    allow = export_azure(_policy(["md-*.b.com", "a.b.com"], ["https:443"]))
    def targets(text: str) -> list[list[str]]:
        return [r["targetFqdns"] for c in json.loads(text)["resources"][0]["properties"][
            "ruleCollections"] for r in c["rules"] if r.get("targetFqdns")]
    assert targets(deny.text) == [["*.b.com"]]
    assert targets(allow.text) == [["a.b.com"]]
    assert any("md-*.b.com" in w for w in deny.warnings + allow.warnings)
