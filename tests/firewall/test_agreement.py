"""The kernel ruleset agrees with the engine: for random policies and random flows, the
verdict of the rendered rules' model (`evaluate`) is what `snapshot.decide` permits."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.engine import References, Request, Snapshot, compile_policy
from egressguard.engine.request import Kind
from egressguard.firewall import Action, Options, Packet, build_ruleset, evaluate
from egressguard.policy import Policy

TAGS = {
    "AzureCloud.westeurope": ["20.50.0.0/16", "20.61.0.0/17", "40.74.0.0/18"],
    "Internal": ["10.20.0.0/16", "192.168.7.0/24", "fd00:1::/48"],
    "Storage": ["52.239.0.0/17", "2603:1000::/40"],
}
CIDRS = ["10.231.0.2/32", "10.0.0.0/8", "192.168.1.0/24", "169.254.169.254/32",
         "127.0.0.0/8", "8.8.8.8/32", "1.2.3.0/24", "20.50.1.0/24", "0.0.0.0/0", "::/0",
         "2001:db8::/32", "2606:4700::/32", "fe80::/10", "::1/128", "100.64.0.0/10",
         "0.0.0.0/8", "64:ff9b::/96", "2002::/16", "224.0.0.0/4"]
SOURCES = ["10.1.0.0/16", "192.168.0.0/16", "0.0.0.0/0", "fd00::/8", "2001:db8:1::/48"]
PORT_SPECS = ["*", 53, 80, 443, "1000-2000", 8080, "0-1023", 22]
EMBED = (0xFFFF << 32, int(ipaddress.IPv6Address("64:ff9b::")), 0)


def _policy(rnd: random.Random) -> Policy:
    collections = []
    for c in range(rnd.randint(1, 3)):
        rules = []
        for r in range(rnd.randint(1, 5)):
            dests = rnd.sample(CIDRS + list(TAGS) + ["*", "example.com"], rnd.randint(1, 3))
            rule: dict[str, object] = {
                "name": f"r{r}", "destinations": dests,
                "protocols": rnd.sample(["tcp", "udp", "icmp", "any"], rnd.randint(1, 2)),
                "ports": rnd.sample(PORT_SPECS, rnd.randint(1, 2))}
            if rnd.random() < 0.3:
                rule["action"] = rnd.choice(["allow", "deny"])
            if rnd.random() < 0.2:
                rule["sources"] = rnd.sample(SOURCES, rnd.randint(1, 2))
            rules.append(rule)
        collections.append({"name": f"c{c}", "priority": rnd.choice([100, 200, 300, 1000]),
                            "action": rnd.choice(["allow", "allow", "deny"]),
                            "report_only": rnd.random() < 0.15, "rules": rules})
    return Policy.model_validate({
        "restrict_outbound_network_access": rnd.random() < 0.6,
        "report_only": rnd.random() < 0.1,
        "network_rule_collections": collections})


def _address(rnd: random.Random) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Inside a rule prefix or a special range, public, or an IPv6 form carrying IPv4."""
    pick = rnd.random()
    if pick < 0.6:
        net = ipaddress.ip_network(rnd.choice(CIDRS + [p for v in TAGS.values() for p in v]
                                              + ["10.231.0.0/30", "172.16.0.0/12"]))
        ip = net[rnd.randrange(min(net.num_addresses, 2**32))]
    elif pick < 0.75:
        ip = ipaddress.IPv4Address(rnd.getrandbits(32))
    elif pick < 0.8:
        ip = ipaddress.IPv6Address(rnd.choice([0, 1, rnd.getrandbits(128)]))
    else:
        ip = ipaddress.IPv4Address(rnd.getrandbits(32))
    if ip.version == 4 and rnd.random() < 0.3:
        if rnd.random() < 0.25:  # 6to4
            return ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80) | rnd.getrandbits(16))
        return ipaddress.IPv6Address(rnd.choice(EMBED) | int(ip))
    return ip


def _flow(rnd: random.Random) -> Packet:
    daddr = _address(rnd)
    protocol = rnd.choice(["tcp", "udp", "icmp"])
    port = None if protocol == "icmp" else rnd.choice(
        [53, 80, 443, 999, 1000, 1500, 2000, 2001, 8080, 22, 0, 1023, 1024, 65535])
    if rnd.random() < 0.5:
        net = ipaddress.ip_network(rnd.choice([s for s in SOURCES
                                               if ":" in s] if daddr.version == 6
                                              else [s for s in SOURCES if ":" not in s]))
        saddr = net[rnd.randrange(min(net.num_addresses, 2**32))]
    else:
        saddr = (ipaddress.IPv4Address(rnd.getrandbits(32)) if daddr.version == 4
                 else ipaddress.IPv6Address(rnd.getrandbits(128)))
    return Packet(protocol=protocol, daddr=daddr, dport=port, saddr=saddr)


def _engine_permits(snapshot: Snapshot, flow: Packet) -> bool:
    request = Request(kind=Kind.FLOW, host=str(flow.daddr), port=flow.dport,
                      protocol=flow.protocol, source=flow.saddr)
    return snapshot.decide(request).permitted


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False))
def test_kernel_ruleset_permits_exactly_the_flows_the_engine_permits(
        rnd: random.Random) -> None:
    policy = _policy(rnd)
    refs = References(service_tags=TAGS)
    snapshot = compile_policy(policy, refs)
    ruleset = build_ruleset(policy, refs, Options(gateway_ports=(), hooks=("output",
                                                                          "forward")))
    for _ in range(60):
        flow = _flow(rnd)
        for hook in ("output", "forward"):
            action, rule = evaluate(ruleset, hook, flow)
            kernel = action in (Action.ACCEPT, Action.LOG)
            assert kernel == _engine_permits(snapshot, flow), (
                f"{flow} at {hook}: kernel {action} by {rule and rule.comment}, "
                f"engine {snapshot.decide(Request(kind=Kind.FLOW, host=str(flow.daddr), port=flow.dport, protocol=flow.protocol, source=flow.saddr))}\n"  # noqa: E501
                f"{policy.model_dump_json(indent=1)}")


def _decide_both(policy: Policy, flow: Packet) -> tuple[bool, bool]:
    refs = References(service_tags=TAGS)
    action, _ = evaluate(build_ruleset(policy, refs, Options(gateway_ports=())), "output",
                         flow)
    return action is Action.ACCEPT, _engine_permits(compile_policy(policy, refs), flow)


def _p(rules: list[dict[str, object]], restricted: bool = True) -> Policy:
    return Policy.model_validate({"restrict_outbound_network_access": restricted,
                                  "network_rule_collections": [
                                      {"name": "c", "priority": 100, "rules": rules}]})


def test_private_address_is_dropped_even_when_unrestricted() -> None:
    flow = Packet("tcp", ipaddress.ip_address("10.0.0.5"), 443)
    assert _decide_both(_p([], restricted=False), flow) == (False, False)


def test_star_rule_does_not_lift_the_guard_for_metadata_address() -> None:
    flow = Packet("tcp", ipaddress.ip_address("169.254.169.254"), 80)
    policy = _p([{"name": "all", "destinations": ["*", "0.0.0.0/0"]}])
    assert _decide_both(policy, flow) == (False, False)


def test_explicit_cidr_later_in_order_lifts_the_guard_for_an_earlier_star_allow() -> None:
    flow = Packet("tcp", ipaddress.ip_address("10.9.9.9"), 443)
    policy = _p([{"name": "all", "destinations": ["*"]},
                 {"name": "lan", "destinations": ["10.0.0.0/8"]}])
    assert _decide_both(policy, flow) == (True, True)


def test_nat64_form_of_a_private_address_is_guarded_like_the_address() -> None:
    flow = Packet("tcp", ipaddress.ip_address("64:ff9b::a00:5"), 443)
    assert _decide_both(_p([{"name": "v6", "destinations": ["::/0"]}]), flow) == (
        False, False)
    allowed = _p([{"name": "lan", "destinations": ["10.0.0.0/8"]}])
    assert _decide_both(allowed, flow) == (True, True)


def test_deny_rule_before_allow_wins_in_the_kernel() -> None:
    flow = Packet("udp", ipaddress.ip_address("8.8.8.8"), 53)
    policy = _p([{"name": "no-dns", "action": "deny", "destinations": ["*"],
                  "protocols": ["udp"], "ports": [53]},
                 {"name": "google", "destinations": ["8.8.8.8"]}], restricted=False)
    assert _decide_both(policy, flow) == (False, False)


# -- FQDN destinations through DNS-learned sets (issue 15, item 5) ------------------------

NAME = "ntp.example.com"
LEARNABLE = ["8.8.8.8", "1.2.3.4", "20.50.1.7", "10.0.0.5", "2606:4700::6", "169.254.169.254"]


def _fqdn_policy(rnd: random.Random) -> Policy:
    policy = _policy(rnd)
    data = policy.model_dump(mode="json")
    rules = rnd.choice(data["network_rule_collections"])["rules"]
    rules.insert(rnd.randrange(len(rules) + 1), {
        "name": "by-name", "destinations": [NAME],
        "protocols": rnd.sample(["tcp", "udp", "any"], 1),
        "ports": rnd.sample(PORT_SPECS, rnd.randint(1, 2)),
        **({"action": rnd.choice(["allow", "deny"])} if rnd.random() < 0.4 else {})})
    return Policy.model_validate(data)


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False))
def test_kernel_with_learned_sets_permits_what_the_engine_permits_for_the_name(
        rnd: random.Random) -> None:
    """A flow to an address the name's set holds is the flow to that name (what the engine
    decides for the name resolving there); any other address is decided as itself."""
    policy = _fqdn_policy(rnd)
    refs = References(service_tags=TAGS)
    snapshot = compile_policy(policy, refs)
    learned = rnd.sample(LEARNABLE, rnd.randint(1, 3))
    ruleset = build_ruleset(policy, refs, Options(
        gateway_ports=(), hooks=("output",), fqdn_sets=True,
        learned={NAME: [(a, 30) for a in learned]}))
    for _ in range(40):
        flow = _flow(rnd)
        same_family = [a for a in learned
                       if ipaddress.ip_address(a).version == flow.daddr.version]
        if same_family and rnd.random() < 0.5:
            flow = Packet(protocol=flow.protocol, daddr=ipaddress.ip_address(
                rnd.choice(same_family)), dport=flow.dport, saddr=flow.saddr)
        action, rule = evaluate(ruleset, "output", flow)
        kernel = action in (Action.ACCEPT, Action.LOG)
        by_name = str(flow.daddr) in learned
        request = Request(kind=Kind.FLOW, host=NAME if by_name else str(flow.daddr),
                          port=flow.dport, protocol=flow.protocol, source=flow.saddr,
                          addresses=(flow.daddr,) if by_name else ())
        engine = snapshot.decide(request)
        assert kernel == engine.permitted, (
            f"{flow} ({'by name' if by_name else 'as itself'}): kernel {action} by "
            f"{rule and rule.comment}, engine {engine}\nlearned {learned}\n"
            f"{policy.model_dump_json(indent=1)}")


@pytest.mark.parametrize(("first", "then", "permitted"), [
    ("deny", "allow", False),  # an earlier FQDN deny is not passed over by a later CIDR allow
    ("allow", "deny", True),  # an earlier FQDN allow wins over a later CIDR deny
])
def test_fqdn_and_cidr_rules_decide_in_rule_order_in_the_kernel_and_the_engine(
        first: str, then: str, permitted: bool) -> None:
    policy = _p([{"name": "by-name", "action": first, "destinations": [NAME],
                  "protocols": ["udp"], "ports": [123]},
                 {"name": "by-cidr", "action": then, "destinations": ["0.0.0.0/0"],
                  "protocols": ["udp"], "ports": [123]}])
    flow = Packet(protocol="udp", daddr=ipaddress.ip_address("8.8.8.8"), dport=123)
    ruleset = build_ruleset(policy, None, Options(gateway_ports=(), fqdn_sets=True,
                                                  learned={NAME: [("8.8.8.8", 30)]}))
    action, _ = evaluate(ruleset, "output", flow)
    engine = compile_policy(policy).decide(Request(
        kind=Kind.FLOW, host=NAME, port=123, protocol="udp", addresses=(flow.daddr,)))
    assert (action is Action.ACCEPT) == engine.permitted == permitted
