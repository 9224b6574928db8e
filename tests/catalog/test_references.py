"""Service tags, FQDN tags and storage aliases as the engine sees them via `references()`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from egressguard.catalog import fqdn_tags, references, storage_aliases
from egressguard.catalog.servicetags import (
    ServiceTagError,
    import_file,
    load_stored,
    lookup,
    stored_path,
)
from egressguard.engine import CompileError, Kind, Request, Verdict, compile_policy
from egressguard.policy import load_policy_text
from tests.catalog.conftest import FIXTURE_TAGS

TAGGED = """
restrict_outbound_network_access: true
network_rule_collections:
  - name: n
    rules:
      - {name: monitor, destinations: [AzureMonitor], protocols: [TCP], ports: ['443']}
      - {name: storage, destinations: [Storage.WestEurope], protocols: [TCP], ports: ['443']}
"""


def test_network_rules_naming_a_tag_resolve_to_its_prefixes(imported_tags: Path) -> None:
    snapshot = compile_policy(load_policy_text(TAGGED), references())
    def flow(ip: str) -> Verdict:
        return snapshot.decide(Request(kind=Kind.FLOW, host=ip, port=443)).verdict
    assert flow("20.38.128.9") is Verdict.ALLOW      # AzureMonitor
    assert flow("52.239.141.1") is Verdict.ALLOW     # Storage.westeurope (case-insensitive)
    assert flow("52.239.150.1") is Verdict.DENY      # outside every tag


def test_an_unknown_tag_does_not_compile(home: Path) -> None:
    with pytest.raises(CompileError, match="unknown service tag 'AzureMonitor'"):
        compile_policy(load_policy_text(TAGGED), references())  # nothing imported yet
    with pytest.raises(ServiceTagError, match="no service tags imported"):
        lookup("AzureMonitor")


def test_unknown_tag_lookup_suggests_close_names(imported_tags: Path) -> None:
    with pytest.raises(ServiceTagError, match=r"did you mean AzureCloud\.westeurope"):
        lookup("AzureCloud.westeruope")
    assert lookup("azurecloud.WESTEUROPE").prefixes[0] == "20.50.0.0/18"


@pytest.mark.parametrize(("document", "needle"), [
    ("not json", "not JSON"),
    ('{"values": 3}', "expected an object with a 'values' list"),
    ('{"values": []}', "lists no service tags"),
    ('{"values": [{"name": "AzureCloud.x", "properties": {"addressPrefixes": ["10.0.0.1/8"]}}]}',
     "has host bits set"),
    ('{"values": [{"name": "lower", "properties": {"addressPrefixes": []}}]}',
     "expected a tag name"),
    ('{"values": [{"name": "A", "properties": {"addressPrefixes": []}},'
     ' {"name": "A", "properties": {"addressPrefixes": []}}]}', "duplicate tag name"),
])
def test_a_bad_import_is_rejected_and_keeps_the_previous_tags(
        imported_tags: Path, tmp_path: Path, document: str, needle: str) -> None:
    before = imported_tags.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(document)
    with pytest.raises(ServiceTagError, match=needle):
        import_file(bad)
    assert imported_tags.read_bytes() == before
    assert not [p for p in imported_tags.parent.iterdir() if p.name.startswith(".servicetags")]


def test_reimport_is_seen_by_the_next_references_call(imported_tags: Path,
                                                      tmp_path: Path) -> None:
    assert "AzureMonitor" in references().service_tags
    data = json.loads(FIXTURE_TAGS.read_text())
    data["values"] = [v for v in data["values"] if v["name"] != "AzureMonitor"]
    smaller = tmp_path / "ServiceTags_Public_smaller.json"
    smaller.write_text(json.dumps(data))
    import_file(smaller)
    stat = stored_path().stat()
    os.utime(stored_path(), ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert "AzureMonitor" not in references().service_tags
    assert len(load_stored()) == len(data["values"])


def test_fqdn_tag_in_an_application_rule_expands_from_the_catalog(home: Path) -> None:
    policy = load_policy_text("""
restrict_outbound_network_access: true
application_rule_collections:
  - name: aks
    rules:
      - {name: tag, fqdn_tags: [AzureKubernetesService], protocols: ['https:443']}
""")
    snapshot = compile_policy(policy, references())
    def get(url: str) -> Verdict:
        return snapshot.decide(Request.from_url(url)).verdict
    assert get("https://x1.hcp.northeurope.azmk8s.io/") is Verdict.ALLOW
    assert get("https://packages.aks.azure.com/") is Verdict.ALLOW
    assert get("https://evil-azmk8s.io/") is Verdict.DENY
    assert get("https://x1.hcp.chinaeast2.cx.prod.service.azk8s.cn/") is Verdict.DENY
    assert "*.hcp.chinaeast2.cx.prod.service.azk8s.cn" in fqdn_tags()[
        "AzureKubernetesService.China"]
    assert all("<" not in p for patterns in fqdn_tags().values() for p in patterns)


def test_storage_aliases_fail_closed_and_take_operator_additions(home: Path) -> None:
    aliases = storage_aliases()
    assert aliases["/services/Azure/MachineLearning"] == ()
    assert aliases["/services/Azure"] == ()  # no pattern anyone could register
    home.mkdir(parents=True, exist_ok=True)
    (home / "storage-aliases.yaml").write_text(
        "/services/Azure/MachineLearning: {globs: ['contosomlmanaged*']}\n")
    merged = storage_aliases()
    assert merged["/services/Azure/MachineLearning"] == ("contosomlmanaged*",)
    assert "contosomlmanaged*" in merged["/services/Azure"]  # through `includes`
    snapshot = compile_policy(load_policy_text("""
restrict_outbound_network_access: true
application_rule_collections:
  - name: s
    rules: [{name: blob, targets: ['*.blob.core.windows.net'], protocols: ['https:443']}]
service_endpoint_policies:
  - {name: aml, resources: [mine], aliases: [/services/Azure/MachineLearning]}
"""), references())
    def get(url: str) -> Verdict:
        return snapshot.decide(Request.from_url(url)).verdict
    assert get("https://mine.blob.core.windows.net/") is Verdict.ALLOW
    assert get("https://contosomlmanaged01.blob.core.windows.net/") is Verdict.ALLOW
    assert get("https://attacker.blob.core.windows.net/") is Verdict.DENY


def test_references_is_cheap(imported_tags: Path) -> None:
    import time
    references()
    start = time.perf_counter()
    for _ in range(200):
        references()
    assert (time.perf_counter() - start) / 200 < 0.005
