"""A network rule scoped to identities reaches the kernel only as its identities' source
CIDRs (the one method the kernel can see): never wider than the policy."""

from __future__ import annotations

from egressguard.firewall import build_ruleset, render
from egressguard.policy import Policy


def _policy(rule: dict[str, object], collection: list[str] | None = None) -> Policy:
    return Policy.model_validate({
        "restrict_outbound_network_access": True,
        "identities": {"lab": {"sources": ["10.1.0.0/16"]}, "web": {}},
        "network_rule_collections": [{"name": "c", "priority": 100,
                                      "identities": collection or [], "rules": [rule]}]})


def test_scoped_allow_becomes_an_allow_from_the_identity_sources() -> None:
    text = render(build_ruleset(_policy({"name": "db", "destinations": ["192.0.2.10/32"],
                                         "identities": ["lab"], "ports": [5432]})))
    assert "ip saddr 10.1.0.0/16 ip daddr 192.0.2.10" in text
    assert "ip daddr 192.0.2.10 meta" not in text.replace(
        "ip saddr 10.1.0.0/16 ip daddr 192.0.2.10", "")


def test_scoped_allow_for_identities_without_sources_is_left_out() -> None:
    ruleset = build_ruleset(_policy({"name": "db", "destinations": ["192.0.2.10/32"]},
                                    collection=["web"]))
    text = "\n".join(line for line in render(ruleset).splitlines()
                     if not line.startswith("#"))
    assert "192.0.2.10" not in text
    assert any("left out" in n for n in ruleset.notes)


def test_rule_sources_intersect_with_the_identity_sources() -> None:
    text = render(build_ruleset(_policy({"name": "db", "destinations": ["192.0.2.10/32"],
                                         "identities": ["lab"],
                                         "sources": ["10.1.2.0/24", "10.9.0.0/16"]})))
    assert "ip saddr 10.1.2.0/24 ip daddr 192.0.2.10" in text
    assert "10.9.0.0/16" not in text and "10.1.0.0/16" not in text


def test_scoped_deny_without_sources_denies_every_source() -> None:
    text = render(build_ruleset(_policy({"name": "no", "action": "deny",
                                         "destinations": ["192.0.2.10/32"]},
                                        collection=["web"])))
    assert "ip daddr 192.0.2.10 counter drop" in text
