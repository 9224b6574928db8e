"""FQDN tags allow HTTPS only, as Azure Firewall's do (issue 15, item 6): a rule naming
`AzureKubernetesService` opens its names on 443 through a running gateway, never plain
HTTP on port 80."""

from __future__ import annotations

import httpx
import pytest

from egressguard.catalog import references
from egressguard.engine import Kind, Request, compile_policy
from egressguard.policy import PolicyError, load_policy_text

pytestmark = pytest.mark.timeout(30)
AKS_TAG = """
restrict_outbound_network_access: Enabled
trusted_ranges: [127.0.0.0/8]
application_rule_collections:
  - name: aks
    priority: 100
    rules: [{name: tag, fqdn_tags: [AzureKubernetesService]}]
"""


def test_a_tag_rule_opens_443_not_80() -> None:
    snap = compile_policy(load_policy_text(AKS_TAG), references())
    https = snap.decide(Request(kind=Kind.CONNECT, host="mcr.microsoft.com", port=443))
    assert https.allowed and https.rule == "application:aks/tag"
    for kind in (Kind.CONNECT, Kind.HTTP):
        plain = snap.decide(Request(kind=kind, host="mcr.microsoft.com", port=80))
        assert not plain.allowed, plain


def test_a_tag_rule_listing_plain_http_does_not_load() -> None:
    with pytest.raises(PolicyError, match="FQDN tags allow HTTPS only"):
        load_policy_text(AKS_TAG.replace(
            "fqdn_tags: [AzureKubernetesService]",
            "fqdn_tags: [AzureKubernetesService], protocols: ['http:80', 'https:443']"))


def test_gateway_refuses_plain_http_to_a_tagged_name(gateway_factory, upstream) -> None:
    # The tagged name points at a loopback upstream: were port 80 (or any HTTP) open, the
    # request would reach it.
    gw = gateway_factory(AKS_TAG, resolve={"mcr.microsoft.com": "127.0.0.1"})
    r = httpx.get(f"http://mcr.microsoft.com:{upstream.port}/v2/", proxy=gw.url)
    assert r.status_code == 403 and upstream.peers == []
    r = httpx.get("http://mcr.microsoft.com/v2/", proxy=gw.url)
    assert r.status_code == 403 and r.headers["X-Egressguard-Rule"] == "default"
    event = gw.sink.wait_for(lambda e: e.host == "mcr.microsoft.com" and e.port == 80)
    assert event.verdict == "deny"


def test_gateway_lets_https_to_a_tagged_name_through(gateway_factory) -> None:
    gw = gateway_factory(AKS_TAG, resolve={"mcr.microsoft.com": "127.0.0.1"})
    # Allowed: the gateway goes on to connect to 127.0.0.1:443 (where nothing serves this
    # name, so the tunnel fails), where a denial would be a 403 before any connect.
    with httpx.Client(proxy=gw.url, verify=False) as client, pytest.raises(httpx.HTTPError
                                                                          ) as info:
        client.get("https://mcr.microsoft.com/v2/")
    assert "403" not in str(info.value)
    event = gw.sink.wait_for(lambda e: e.host == "mcr.microsoft.com" and e.port == 443)
    assert event.verdict == "allow" and event.rule == "application:aks/tag"
