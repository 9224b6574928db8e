"""Exports to enforcers that cannot tell workload identities apart never carry an allow
scoped to identities (it would allow every caller); a scoped deny stays a deny."""

from __future__ import annotations

import pytest

from egressguard.export.azure import export_azure
from egressguard.export.cilium import export_cilium
from egressguard.export.kubernetes import export_kubernetes
from egressguard.export.squid import export_squid
from egressguard.policy import Policy

EXPORTERS = {"azure": export_azure, "squid": export_squid, "kubernetes": export_kubernetes,
             "cilium": export_cilium}

POLICY = Policy.model_validate({
    "restrict_outbound_network_access": True,
    "application_rule_collections": [{"name": "apps", "priority": 100, "rules": [
        {"name": "only-web", "targets": ["secret.example.com"], "identities": ["web"]},
        {"name": "all", "targets": ["public.example.com"]}]}],
    "network_rule_collections": [{"name": "nets", "priority": 100, "rules": [
        {"name": "db", "destinations": ["192.0.2.10/32"], "protocols": ["UDP"],
         "identities": ["web"]},
        {"name": "dns", "destinations": ["192.0.2.53/32"], "protocols": ["UDP"]}]}]})


@pytest.mark.parametrize("fmt", ["azure", "squid", "kubernetes", "cilium"])
def test_identity_scoped_allows_are_left_out_with_a_warning(fmt: str) -> None:
    exported = EXPORTERS[fmt](POLICY)
    body = "\n".join(line for line in exported.text.splitlines()
                     if not line.lstrip().startswith(("#", "//")))
    assert "secret.example.com" not in body and "192.0.2.10" not in body
    assert any("scoped to identities" in w for w in exported.warnings)
