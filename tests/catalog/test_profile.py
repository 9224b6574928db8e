"""Generated profiles: placeholders filled, conditions applied, exactly the required set."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from egressguard.catalog import references
from egressguard.catalog.model import CatalogError, Row, get_catalog
from egressguard.catalog.profile import Options, covers, plan_aks, plan_aml, render
from egressguard.engine import Kind, Request, Verdict, compile_policy
from egressguard.policy import load_policy_text

REGION = {"public": "westeurope", "china": "chinaeast2", "usgov": "usgovvirginia"}


def _example_host(pattern: str) -> str:
    """A concrete name the pattern matches: `*.a.b` -> `x1.a.b`, `.a.b` -> `a.b`."""
    if pattern.startswith("."):
        return pattern[1:]
    first, _, rest = pattern.partition(".")
    return f"{first.replace('*', 'x1')}.{rest}" if "*" in first else pattern


def _required_rows(cloud: str) -> list[Row]:
    return [r for s in get_catalog("aks").sections if s.feature == "required"
            for r in s.rows if cloud in r.clouds and not r.only_if]


def _generate(cloud: str, **kw: object) -> str:
    return render(plan_aks(Options(cloud=cloud, region=REGION[cloud], **kw)))  # type: ignore[arg-type]


@pytest.mark.parametrize("cloud", ["public", "china", "usgov"])
def test_profile_for_each_cloud_allows_exactly_the_required_set(
        cloud: str, imported_tags: Path) -> None:
    text = _generate(cloud)
    snapshot = compile_policy(load_policy_text(text), references())
    region = REGION[cloud]
    allowed_patterns = []
    for row in _required_rows(cloud):
        if row.section.kind == "application":
            for target in row.targets_for(cloud):
                pattern = target.replace("<location>", region)
                allowed_patterns.append(pattern)
                decision = snapshot.decide(Request.from_url(
                    f"https://{_example_host(pattern)}/"))
                assert decision.verdict is Verdict.ALLOW, (pattern, decision.reason)
        elif row.destinations[0].form == "any" and len(row.destinations) == 2:
            # NTP: the FQDN alternative was chosen; the engine decides FQDN network rules by
            # name (a DNS lookup or a connect), not for bare flows to an address.
            decision = snapshot.decide(Request(kind=Kind.DNS, host="ntp.ubuntu.com",
                                               protocol="udp"))
            assert decision.verdict is Verdict.ALLOW, (row.id, decision.reason)
            assert decision.rule.endswith("/ntp-udp-123")
        else:
            prefix = references().service_tags[f"AzureCloud.{region}"][0]
            ip = next(ipaddress.ip_network(prefix).hosts())
            decision = snapshot.decide(Request(
                kind=Kind.FLOW, host=str(ip), port=row.port, protocol=row.protocol.lower()))
            assert decision.verdict is Verdict.ALLOW, (row.id, decision.reason)
            wrong_port = snapshot.decide(Request(
                kind=Kind.FLOW, host=str(ip), port=row.port + 1,
                protocol=row.protocol.lower()))
            assert wrong_port.verdict is Verdict.DENY
    # Everything else the catalog knows (other clouds, optional features) stays denied.
    others = {t for r in get_catalog("aks").rows() if r.section.kind == "application"
              for c in r.targets for t in r.targets_for(c)
              if "<" not in t and not any(covers(p, t) for p in allowed_patterns)}
    assert len(others) > 20
    for pattern in sorted(others):
        decision = snapshot.decide(Request.from_url(f"https://{_example_host(pattern)}/"))
        assert decision.verdict is Verdict.DENY, (pattern, decision.rule)
    other_region = snapshot.decide(Request.from_url(
        f"https://x1.hcp.{'eastus' if cloud != 'public' else 'northeurope'}.azmk8s.io/"))
    assert other_region.verdict is Verdict.DENY


def test_generated_file_has_no_placeholder_and_comments_every_rule() -> None:
    text = _generate("public", features=("monitor", "extensions", "api-server-access"),
                     api_server_ip="20.50.10.10", custom_dns=("203.0.113.53",))
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for placeholder in ("<location>", "<region>", "<cluster-region-name>",
                        "APIServerPublicIP", "CustomDNSIP", "RegionCIDRs"):
        assert placeholder not in body
    assert '"westeurope.handler.control.monitor.azure.com"' in text
    assert '"westeurope.dp.kubernetesconfiguration.azure.com"' in text
    assert 'destinations: ["203.0.113.53"]' in text
    assert 'destinations: ["20.50.10.10"]' in text   # tunnel rows narrowed to the API IP
    policy = load_policy_text(text)
    assert policy.restrict_outbound_network_access is True
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- name:") and line.startswith("      "):
            assert ('# source: "Outbound network and FQDN rules for Azure Kubernetes Service '
                    '(AKS) clusters",') in "\n".join(lines[max(0, i - 8):i]), line


def test_private_cluster_drops_the_rows_the_seed_exempts_on_azure_global() -> None:
    text = _generate("public", private_cluster=True)
    assert "tunnel-udp-1194" not in text.replace("omitted tunnel-udp-1194", "")
    assert "azmk8s.io\"]" not in text
    assert "omitted any-hcp-location-azmk8s-io: not required for private clusters" in text
    # The seed states no private-cluster exemption for 21Vianet: the rows stay.
    assert '- name: "tunnel-udp-1194"' in _generate("china", private_cluster=True)


def test_conditions_follow_features() -> None:
    assert "ntp.ubuntu.com" not in _generate("public").split("application_rule_collections")[0]
    legacy = _generate("public", features=("legacy-nodes",))
    assert 'destinations: ["ntp.ubuntu.com"]' in legacy
    assert 'destinations: ["ntp.ubuntu.com"]' in _generate("usgov")  # unconditional there
    konn = _generate("public", features=("konnectivity",))
    assert "omitted tunnel-tcp-9000" in konn


def test_duplicate_targets_across_sections_are_emitted_once() -> None:
    text = _generate("public", features=("monitor", "defender", "cost-analysis"))
    assert text.count('"login.microsoftonline.com"') == 1
    assert text.count('"*.ods.opinsights.azure.com"') == 1
    assert '"*.metrics.ingest.monitor.azure.com"' not in text.replace(
        "*.metrics.ingest.monitor.azure.com (https", "")


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"cloud": "mars", "region": "westeurope"}, "choose one of: public, china, usgov"),
    ({"cloud": "public", "region": "atlantis"}, "westeurope"),
    ({"cloud": "china", "region": "westeurope"}, "chinaeast2"),
    ({"cloud": "public", "region": "westeurope", "features": ("gpu", "warp-drive")},
     "'warp-drive' for aks; choose from: ubuntu-updates, gpu"),
    ({"cloud": "china", "region": "chinaeast2", "features": ("keyvault-csi",)},
     "lists no rows for cloud china"),
    ({"cloud": "public", "region": "westeurope", "features": ("api-server-access",)},
     "needs the API server's public IP: pass --api-server-ip"),
    ({"cloud": "public", "region": "westeurope", "api_server_ip": "not-an-ip"},
     "is not an IP address"),
    ({"cloud": "public", "region": "westeurope", "custom_dns": ("10.0.0.300",)},
     "is not an IP address"),
])
def test_bad_profile_input_is_an_error_listing_the_choices(
        kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(CatalogError, match=None) as info:
        plan_aks(Options(**kwargs))  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_aml_profile_needs_the_storage_account_and_emits_the_service_endpoint_policy(
        imported_tags: Path) -> None:
    with pytest.raises(CatalogError, match="--storage-account"):
        plan_aml(Options(cloud="public", region="westeurope"))
    with pytest.raises(CatalogError, match="choose one of: servicetag, firewall"):
        plan_aml(Options(cloud="public", region="westeurope", mode="nsg",
                         storage_accounts=("amlws",)))
    with pytest.raises(CatalogError, match="choose one of: public"):
        plan_aml(Options(cloud="china", region="chinaeast2", storage_accounts=("amlws",)))
    text = render(plan_aml(Options(
        cloud="public", region="westeurope", storage_accounts=("amlwsstore",),
        features=("curated-environments", "studio", "firewall-service-endpoint"))))
    snapshot = compile_policy(load_policy_text(text), references())
    def verdict(url: str) -> Verdict:
        return snapshot.decide(Request.from_url(url, kind=Kind.CONNECT)).verdict
    assert verdict("https://x1.westeurope.batch.azure.com/") is Verdict.ALLOW
    assert verdict("https://x1.westeurope.service.batch.azure.com/") is Verdict.ALLOW
    assert verdict("https://x1.northeurope.batch.azure.com/") is Verdict.DENY
    assert verdict("https://ml.azure.com/") is Verdict.ALLOW
    assert verdict("https://x1.data.mcr.microsoft.com/") is Verdict.ALLOW
    assert verdict("https://amlwsstore.blob.core.windows.net/") is Verdict.ALLOW
    assert verdict("https://attackerstore.blob.core.windows.net/") is Verdict.DENY


def test_aml_servicetag_mode_uses_the_regional_tags(imported_tags: Path) -> None:
    text = render(plan_aml(Options(cloud="public", region="westeurope", mode="servicetag",
                                   storage_accounts=("amlwsstore",))))
    for tag in ("BatchNodeManagement.westeurope", "AzureMachineLearning",
                "Storage.westeurope"):
        assert f'["{tag}"]' in text
    compile_policy(load_policy_text(text), references())
