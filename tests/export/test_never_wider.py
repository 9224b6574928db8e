"""Never wider, for the union-of-allows targets: whatever the exported Cilium policies or
Kubernetes NetworkPolicies let a pod reach (read with each target's documented
semantics: allows are a union, Cilium's `egressDeny` wins over every allow), the engine
permits. Random policies exercise every construct the exporters must narrow."""

from __future__ import annotations

import ipaddress
import random
import re
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.engine import Request, compile_policy
from egressguard.engine.request import Kind
from egressguard.export.cilium import export_cilium
from egressguard.export.kubernetes import export_kubernetes
from tests.export.policies import REFS, random_policy

IDENTITIES = {"10.1.0.0/16": {"app": "batch"}}
NAMES = ["b.com", "x.b.com", "y.x.b.com", "md-12.x.b.com", "e.net", "q.e.net", "md-1.e.net",
         "other.org", "evil-b.com", "acct.blob.core.windows.net",
         "zz.blob.core.windows.net", "mcr.microsoft.com"]
ADDRESSES = ["8.8.8.8", "9.9.9.9", "10.0.0.5", "10.20.1.1", "169.254.169.254", "52.239.1.1",
             "1.1.1.1", "127.0.0.1", "2001:db8::1", "2603:1000::5"]
SOURCES = ["10.1.2.3", "10.9.9.9", None]
PORTS = [80, 443, 8080, 8443, 1433, 53, 123, 22, 8500]


def _ip_in(ip: Any, block: dict[str, Any]) -> bool:
    net = ipaddress.ip_network(block["cidr"])
    if ip.version != net.version or ip not in net:
        return False
    return not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))


def _port_ok(ports: list[dict[str, Any]] | None, protocol: str, port: int) -> bool:
    if ports is None:
        return True
    for entry in ports:
        proto = entry.get("protocol", "TCP")
        low = int(entry["port"]) if "port" in entry else 1
        high = int(entry.get("endPort", low)) if "port" in entry else 65535
        if proto in ("ANY", protocol.upper()) and (low <= port <= high or low == 0):
            return True
    return False


def _fqdn_ok(selector: dict[str, str], name: str) -> bool:
    if "matchName" in selector:
        return name == selector["matchName"]
    pattern = selector["matchPattern"]
    if pattern == "*":
        return True
    regex = re.escape(pattern).replace(r"\*\*\.", "(?:[-a-z0-9_]+\\.)+").replace(
        r"\*", "[-a-z0-9_]*")
    return re.fullmatch(regex, name) is not None


def _cilium_ports(rule: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "toPorts" not in rule:
        return None
    return [p for tp in rule["toPorts"] for p in tp["ports"]]


def _selected(doc: dict[str, Any], source: str | None, labels_key: str) -> bool:
    selector = doc["spec"][labels_key]
    if not selector:
        return True
    if source is None:
        return False
    return any(ipaddress.ip_address(source) in ipaddress.ip_network(cidr)
               for cidr, labels in IDENTITIES.items()
               if labels == selector.get("matchLabels"))


def cilium_allows(docs: list[dict[str, Any]], name: str | None, ip: Any, protocol: str,
                  port: int, source: str | None) -> bool:
    mine = [d for d in docs if _selected(d, source, "endpointSelector")]
    for doc in mine:
        for rule in doc["spec"].get("egressDeny", []):
            if any(_ip_in(ip, b) for b in rule.get("toCIDRSet", [])) and _port_ok(
                    _cilium_ports(rule), protocol, port):
                return False
    for doc in mine:
        dns = [s for r in doc["spec"]["egress"] for tp in r.get("toPorts", [])
               for s in tp.get("rules", {}).get("dns", [])]
        for rule in doc["spec"]["egress"]:
            if not _port_ok(_cilium_ports(rule), protocol, port):
                continue
            if any(_ip_in(ip, b) for b in rule.get("toCIDRSet", [])):
                return True
            if name is not None and any(_fqdn_ok(s, name) for s in rule.get("toFQDNs", [])) \
                    and any(_fqdn_ok(s, name) for s in dns):
                return True
    return False


def kubernetes_allows(docs: list[dict[str, Any]], ip: Any, protocol: str, port: int,
                      source: str | None) -> bool:
    for doc in docs:
        if doc["metadata"]["name"].endswith("gateway-only") or not _selected(
                doc, source, "podSelector"):
            continue
        for rule in doc["spec"]["egress"]:
            # An absent or empty `to` is every destination (the API reference).
            to = rule.get("to")
            if (not to or any(_ip_in(ip, peer["ipBlock"]) for peer in to)) and _port_ok(
                    rule.get("ports"), protocol, port):
                return True
    return False


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_cilium_export_never_allows_what_the_engine_denies(rnd: random.Random) -> None:
    policy = random_policy(rnd)
    snapshot = compile_policy(policy, REFS)
    exported = export_cilium(policy, REFS, identities=IDENTITIES)
    docs = list(yaml.load_all(exported.text, Loader=yaml.CSafeLoader))
    for _ in range(40):
        ip = ipaddress.ip_address(rnd.choice(ADDRESSES))
        port = rnd.choice(PORTS)
        source = rnd.choice(SOURCES)
        src = ipaddress.ip_address(source) if source else None
        if rnd.random() < 0.6:
            name = rnd.choice(NAMES)
            request = Request(kind=Kind.CONNECT, host=name, port=port, addresses=(ip,),
                              source=src)
            protocol = "tcp"
        else:
            name = None
            protocol = rnd.choice(["tcp", "udp"])
            request = Request(kind=Kind.FLOW, host=str(ip), port=port, protocol=protocol,
                              source=src)
        if cilium_allows(docs, name, ip, protocol, port, source):
            # At L3 a connection to `ip` is the same whichever name led there, so the
            # engine permitting it to the address itself (a CONNECT to the literal, or a
            # flow) is as good as permitting it by name.
            same = [request]
            if protocol == "tcp":
                same += [Request(kind=Kind.CONNECT, host=str(ip), port=port, source=src),
                         Request(kind=Kind.FLOW, host=str(ip), port=port, source=src)]
            assert any(snapshot.decide(r).permitted for r in same), (
                f"cilium allows {request}, engine: {snapshot.decide(request)}\n"
                f"{exported.text}\n{policy.model_dump_json(exclude_defaults=True)}")


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_kubernetes_export_never_allows_a_flow_the_engine_denies(rnd: random.Random) -> None:
    policy = random_policy(rnd)
    snapshot = compile_policy(policy, REFS)
    exported = export_kubernetes(policy, REFS, identities=IDENTITIES)
    docs = list(yaml.load_all(exported.text, Loader=yaml.CSafeLoader))
    for _ in range(40):
        ip = ipaddress.ip_address(rnd.choice(ADDRESSES))
        port = rnd.choice(PORTS)
        protocol = rnd.choice(["tcp", "udp"])
        source = rnd.choice(SOURCES)
        if kubernetes_allows(docs, ip, protocol, port, source):
            request = Request(kind=Kind.FLOW, host=str(ip), port=port, protocol=protocol,
                              source=ipaddress.ip_address(source) if source else None)
            decision = snapshot.decide(request)
            assert decision.permitted, (f"kubernetes allows {request}, engine: {decision}\n"
                                        f"{exported.text}\n"
                                        f"{policy.model_dump_json(exclude_defaults=True)}")
