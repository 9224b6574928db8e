"""Never wider, Azure Firewall: the exported rule collection group read with Azure's
documented processing (collections by priority, network rules before application rules,
first match decides, deny by default) never allows what the engine denies."""

from __future__ import annotations

import ipaddress
import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.analysis.patterns import matches
from egressguard.engine import Request, compile_policy
from egressguard.engine.request import Kind
from egressguard.export.azure import export_azure
from tests.export.policies import REFS, random_policy
from tests.export.test_never_wider import ADDRESSES, NAMES, PORTS, SOURCES


def _ports_ok(ports: list[str], port: int) -> bool:
    for text in ports:
        if text == "*":
            return True
        low, _, high = text.partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def _addr_ok(values: list[str], ip: Any) -> bool:
    for value in values:
        if value == "*":
            return True
        nets = REFS.service_tags.get(value, [value])
        if any(ip.version == ipaddress.ip_network(n).version
               and ip in ipaddress.ip_network(n) for n in nets):
            return True
    return False


def _fqdn_ok(target: str, name: str) -> bool:
    if target == "*":
        return True
    if target.startswith("*."):
        return name.endswith(target[1:])
    return name == target


def azure_allows(doc: dict[str, Any], name: str | None, ip: Any, protocol: str, port: int,
                 source: Any) -> bool:
    collections = sorted(doc["resources"][0]["properties"]["ruleCollections"],
                         key=lambda c: c["priority"])

    def src_ok(rule: dict[str, Any]) -> bool:
        return _addr_ok(rule["sourceAddresses"], source) if source is not None \
            else rule["sourceAddresses"] == ["*"]

    for kind in ("NetworkRule", "ApplicationRule"):
        for collection in collections:
            for rule in collection["rules"]:
                if rule["ruleType"] != kind or not src_ok(rule):
                    continue
                if kind == "NetworkRule":
                    if not ({"Any", protocol.upper()} & set(rule["ipProtocols"])) or \
                            not _ports_ok(rule["destinationPorts"], port):
                        continue
                    hit = _addr_ok(rule.get("destinationAddresses", []), ip) or (
                        name is not None and name in rule.get("destinationFqdns", []))
                else:
                    if name is None or protocol != "tcp" or port not in [
                            p["port"] for p in rule["protocols"]]:
                        continue
                    tagged = [p for t in rule.get("fqdnTags", [])
                              for p in REFS.fqdn_tags.get(t, [])]
                    hit = any(_fqdn_ok(t, name) for t in rule.get("targetFqdns", [])) or any(
                        matches(p, name) for p in tagged)
                if hit:
                    return bool(collection["action"]["type"] == "Allow")
    return False


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_azure_export_never_allows_what_the_engine_denies(rnd: random.Random) -> None:
    policy = random_policy(rnd)
    snapshot = compile_policy(policy, REFS)
    exported = export_azure(policy, REFS)
    doc = json.loads(exported.text)
    for _ in range(40):
        ip = ipaddress.ip_address(rnd.choice(ADDRESSES))
        port = rnd.choice(PORTS)
        source = rnd.choice(SOURCES)
        src = ipaddress.ip_address(source) if source else None
        name = rnd.choice(NAMES) if rnd.random() < 0.6 else None
        protocol = "tcp" if name else rnd.choice(["tcp", "udp"])
        if not azure_allows(doc, name, ip, protocol, port, src):
            continue
        if name is not None:
            request = Request(kind=Kind.CONNECT, host=name, port=port, addresses=(ip,),
                              source=src)
        else:
            request = Request(kind=Kind.FLOW, host=str(ip), port=port, protocol=protocol,
                              source=src)
        assert snapshot.decide(request).permitted, (
            f"azure allows {request}, engine: {snapshot.decide(request)}\n{exported.text}\n"
            f"{policy.model_dump_json(exclude_defaults=True)}")
