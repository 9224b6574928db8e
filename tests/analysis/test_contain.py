"""The containment prover: exact answers over host patterns, CIDRs, ports, protocols,
sources, rule order and the address guard, with counterexamples the engine confirms."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressguard.analysis.cells import glob_witnesses
from egressguard.analysis.contain import check_arguments, contains
from egressguard.analysis.simulate import parse_requests
from egressguard.engine import Kind, Request, compile_policy
from egressguard.policy import Policy


def _policy(data: dict[str, Any]) -> Policy:
    return Policy.model_validate({"restrict_outbound_network_access": True, **data})


def _apps(*rules: dict[str, Any], priority: int = 1000, action: str = "allow",
          name: str = "apps") -> dict[str, Any]:
    return {"name": name, "priority": priority, "action": action, "rules": list(rules)}


def _confirmed(policy: Policy, ceiling: Policy, line: str) -> bool:
    request = parse_requests(line)[0].request
    return (compile_policy(policy).decide(request).permitted
            and not compile_policy(ceiling).decide(request).permitted)


def test_narrower_wildcards_under_a_broader_ceiling_are_contained() -> None:
    policy = _policy({"allowed_fqdn_list": ["api.github.com", "*.pkg.github.com"],
                      "application_rule_collections": [_apps(
                          {"name": "md", "targets": ["md-*.blob.example.com"],
                           "protocols": ["https:443"]})]})
    ceiling = _policy({"allowed_fqdn_list": [".github.com", "*.blob.example.com"]})
    answer = contains(policy, ceiling)
    assert answer.status == "contained", answer.message()
    assert answer.cells > 0


def test_a_name_matching_two_overlapping_label_globs_is_found() -> None:
    # The ceiling denies `*-prod` first; only a label matching both globs exceeds it.
    policy = _policy({"application_rule_collections": [_apps(
        {"name": "md", "targets": ["md-*.x.com"], "protocols": ["https:443"]})]})
    ceiling = _policy({"application_rule_collections": [
        _apps({"name": "prod", "targets": ["*-prod.x.com"]}, priority=100, action="deny",
              name="deny"),
        _apps({"name": "md", "targets": ["md-*.x.com"], "protocols": ["https:443"]})]})
    answer = contains(policy, ceiling)
    assert answer.status == "exceeds"
    assert answer.counterexample is not None
    host = parse_requests(answer.counterexample)[0].request
    label = (host.uri or host.host).split("://")[-1].split(".")[0]
    assert label.startswith("md-") and label.endswith("-prod")
    assert _confirmed(policy, ceiling, answer.counterexample)


def test_glob_witnesses_cover_every_realisable_subset() -> None:
    labels = glob_witnesses(["md-*", "*-prod", "*"], avoid=set())
    import fnmatch

    subsets = {frozenset(g for g in ("md-*", "*-prod", "*") if fnmatch.fnmatchcase(lab, g))
               for lab in labels}
    assert subsets == {frozenset({"*"}), frozenset({"*", "md-*"}),
                       frozenset({"*", "*-prod"}), frozenset({"*", "md-*", "*-prod"})}
    assert all(not lab.startswith("-") and not lab.endswith("-") for lab in labels)


def test_a_deny_rule_first_narrows_a_cidr_into_the_ceiling() -> None:
    # 20.0.0.0/7 = 20/8 + 21/8; the policy denies 20/8 first, so it allows only 21/8.
    policy = _policy({"network_rule_collections": [
        {"name": "deny", "priority": 100, "action": "deny", "rules": [
            {"name": "d", "destinations": ["20.0.0.0/8"]}]},
        {"name": "allow", "priority": 200, "rules": [
            {"name": "a", "destinations": ["20.0.0.0/7"], "protocols": ["tcp"],
             "ports": ["443"]}]}]})
    ceiling = _policy({"network_rule_collections": [{"name": "allow", "rules": [
        {"name": "a", "destinations": ["21.0.0.0/8"], "protocols": ["tcp"],
         "ports": ["443"]}]}]})
    assert contains(policy, ceiling).status == "contained"
    widened = _policy({"network_rule_collections": [{"name": "allow", "rules": [
        {"name": "a", "destinations": ["20.0.0.0/7"], "protocols": ["tcp"],
         "ports": ["443"]}]}]})
    answer = contains(widened, ceiling)
    assert answer.status == "exceeds" and answer.counterexample is not None
    assert "20.0.0.0" in answer.counterexample
    assert _confirmed(widened, ceiling, answer.counterexample)


def test_a_udp_port_range_beyond_the_ceiling_gives_a_udp_flow() -> None:
    policy = _policy({"network_rule_collections": [{"name": "vpn", "rules": [
        {"name": "a", "destinations": ["20.50.0.0/16"], "protocols": ["udp"],
         "ports": ["1000-2000"]}]}]})
    ceiling = _policy({"network_rule_collections": [{"name": "vpn", "rules": [
        {"name": "a", "destinations": ["20.50.0.0/16"], "protocols": ["udp", "tcp"],
         "ports": ["1000-1999"]}]}]})
    answer = contains(policy, ceiling)
    assert answer.status == "exceeds" and answer.counterexample is not None
    assert answer.counterexample.split()[1].endswith(":2000/udp")
    assert _confirmed(policy, ceiling, answer.counterexample)
    args = check_arguments(answer.counterexample)
    assert args[:5] == [args[0], "--kind", "flow", "--protocol", "udp"]


def test_an_icmp_flow_to_a_name_beyond_the_ceiling_is_found() -> None:
    def net(protocol: str) -> Policy:
        return _policy({"network_rule_collections": [{"name": "n", "rules": [
            {"name": "a", "destinations": ["x.example.com"], "protocols": [protocol]}]}]})

    answer = contains(net("icmp"), net("tcp"))
    assert answer.counterexample == "flow x.example.com/icmp"
    assert _confirmed(net("icmp"), net("tcp"), answer.counterexample)
    assert contains(net("icmp"), net("any")).status == "contained"


def test_a_private_cidr_is_not_under_a_star_ceiling_because_of_the_guard() -> None:
    # `*` never lifts the address guard; naming 10.1.0.0/16 does.
    policy = _policy({"network_rule_collections": [{"name": "n", "rules": [
        {"name": "a", "destinations": ["10.1.0.0/16"], "protocols": ["tcp"]}]}]})
    ceiling = _policy({"network_rule_collections": [{"name": "n", "rules": [
        {"name": "a", "destinations": ["*"], "protocols": ["tcp"]}]}]})
    answer = contains(policy, ceiling)
    assert answer.status == "exceeds" and answer.counterexample is not None
    assert "10.1." in answer.counterexample
    assert _confirmed(policy, ceiling, answer.counterexample)
    assert contains(ceiling, policy).status == "exceeds"


def test_a_wider_source_range_is_a_counterexample_with_its_source() -> None:
    rule = {"name": "a", "targets": ["pypi.org"], "protocols": ["https:443"]}
    policy = _policy({"application_rule_collections": [_apps(
        {**rule, "sources": ["10.1.0.0/16"]})]})
    ceiling = _policy({"application_rule_collections": [_apps(
        {**rule, "sources": ["10.1.2.0/24"]})]})
    answer = contains(policy, ceiling)
    assert answer.status == "exceeds" and answer.counterexample is not None
    assert "source=10.1." in answer.counterexample
    assert _confirmed(policy, ceiling, answer.counterexample)


def test_an_ipv4_mapped_ipv6_literal_is_judged_like_its_ipv4_address() -> None:
    policy = _policy({"network_rule_collections": [{"name": "n", "rules": [
        {"name": "a", "destinations": ["::ffff:0:0/96"], "protocols": ["tcp"]}]}]})
    ceiling = _policy({"network_rule_collections": [{"name": "n", "rules": [
        {"name": "a", "destinations": ["::ffff:0:0/96"], "protocols": ["tcp"]},
        {"name": "b", "destinations": ["::/0"], "protocols": ["tcp"]}]}]})
    assert contains(policy, ceiling).status == "contained"


def test_a_callout_regex_missing_from_the_ceiling_gives_a_confirmed_callout() -> None:
    policy = _policy({"restrict_outbound_network_access": False, "callouts": [
        {"callout_type": "sql", "uri_regex": r"^https://[a-z]+\.data\.example/",
         "can_call": True}]})
    ceiling = _policy({"restrict_outbound_network_access": False})
    answer = contains(policy, ceiling)
    assert answer.status == "exceeds" and answer.counterexample is not None
    assert answer.counterexample.startswith("sql https://")
    assert _confirmed(policy, ceiling, answer.counterexample)


def test_an_equivalent_but_different_regex_is_unknown_and_strict_refuses() -> None:
    policy = _policy({"callouts": [{"callout_type": "sql",
                                    "uri_regex": r"^https://a\.example\.com/(x|y)",
                                    "can_call": True}]})
    ceiling = _policy({"callouts": [{"callout_type": "sql",
                                     "uri_regex": r"^https://a\.example\.com/[xy]",
                                     "can_call": True}]})
    answer = contains(policy, ceiling)
    assert answer.status == "unknown"
    assert "could not prove" in answer.message()
    assert answer.refuses(strict=True) and not answer.refuses(strict=False)


def test_an_identical_callout_layer_is_contained() -> None:
    callouts = [{"callout_type": "sql", "uri_regex": r"^https://a\.example\.com/",
                 "can_call": True}]
    assert contains(_policy({"callouts": callouts}),
                    _policy({"callouts": callouts})).status == "contained"


def test_an_unrestricted_policy_exceeds_a_restricted_ceiling() -> None:
    answer = contains(_policy({"restrict_outbound_network_access": False}), _policy({}))
    assert answer.status == "exceeds" and answer.counterexample is not None
    assert _confirmed(_policy({"restrict_outbound_network_access": False}), _policy({}),
                      answer.counterexample)


# -- property: the prover agrees with the engine ---------------------------------------

PATTERNS = ["x.com", "*.x.com", ".x.com", "md-*.x.com", "*-prod.x.com", "y.x.com",
            "*.y.x.com", "z.org", ".z.org", "*"]
CIDRS = ["20.0.0.0/8", "20.0.0.0/7", "21.0.0.0/8", "20.1.0.0/16", "10.1.0.0/16",
         "0.0.0.0/0", "2600::/16", "2600:1::/32"]
SOURCES = [[], [], ["10.1.0.0/16"], ["10.1.2.0/24"]]

app_rule = st.fixed_dictionaries({
    "targets": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2),
    "protocols": st.lists(st.sampled_from(["http:80", "https:443", "https:8443", "http:*"]),
                          min_size=1, max_size=2, unique=True),
    "sources": st.sampled_from(SOURCES),
    "action": st.sampled_from(["allow", "allow", "deny"]),
})
net_rule = st.fixed_dictionaries({
    "destinations": st.lists(st.sampled_from([*CIDRS, "x.com", "*.z.org"]), min_size=1,
                             max_size=2),
    "protocols": st.lists(st.sampled_from(["tcp", "udp", "any"]), min_size=1, max_size=2,
                          unique=True),
    "ports": st.lists(st.sampled_from(["443", "80", "1000-2000", "*", "53"]), min_size=1,
                      max_size=2),
    "sources": st.sampled_from(SOURCES),
    "action": st.sampled_from(["allow", "allow", "deny"]),
    "match_resolved_names": st.booleans(),
})


@st.composite
def policy_data(draw: st.DrawFn) -> dict[str, Any]:
    apps = draw(st.lists(app_rule, max_size=3))
    nets = draw(st.lists(net_rule, max_size=2))
    return {
        "restrict_outbound_network_access": draw(st.sampled_from([True, True, False])),
        "allowed_fqdn_list": draw(st.lists(st.sampled_from(PATTERNS[:-1]), max_size=2)),
        "trusted_ranges": draw(st.sampled_from([[], ["10.1.0.0/16"]])),
        "application_rule_collections": [
            {"name": f"a{i}", "priority": draw(st.integers(100, 300)),
             "rules": [{**r, "name": "r"}]} for i, r in enumerate(apps)],
        "network_rule_collections": [
            {"name": f"n{i}", "priority": draw(st.integers(100, 300)),
             "rules": [{**r, "name": "r"}]} for i, r in enumerate(nets)],
    }


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Policy, Policy]:
    """A policy and a ceiling near it (so both answers, contained and not, are common):
    the same with a rule more, a collection less, a deny rule first, or another one."""
    mine = draw(policy_data())
    theirs = {k: list(v) if isinstance(v, list) else v for k, v in mine.items()}
    how = draw(st.sampled_from(["extend", "narrow", "narrow", "drop", "deny", "other"]))
    if how == "narrow" and (theirs["application_rule_collections"]
                            or theirs["network_rule_collections"]):
        field = "network_rule_collections" if not theirs["application_rule_collections"] or (
            theirs["network_rule_collections"] and draw(st.booleans())) \
            else "application_rule_collections"
        index = draw(st.integers(0, len(theirs[field]) - 1))
        collection = dict(theirs[field][index])
        rule = dict(collection["rules"][0])
        fresh: dict[str, Any] = draw(net_rule if field.startswith("network") else app_rule)
        key = draw(st.sampled_from(sorted(k for k in fresh if k != "action")))
        rule[key] = fresh[key]  # one dimension of one rule changes
        collection["rules"] = [rule]
        theirs[field][index] = collection
    elif how == "extend":
        theirs["application_rule_collections"].append(
            {"name": "extra", "priority": draw(st.integers(100, 300)),
             "rules": [{**draw(app_rule), "name": "r", "action": "allow"}]})
        theirs["network_rule_collections"].append(
            {"name": "extra", "priority": draw(st.integers(100, 300)),
             "rules": [{**draw(net_rule), "name": "r", "action": "allow"}]})
    elif how == "drop":
        field = draw(st.sampled_from(["application_rule_collections",
                                      "network_rule_collections", "allowed_fqdn_list"]))
        if theirs[field]:
            theirs[field].pop(draw(st.integers(0, len(theirs[field]) - 1)))
    elif how == "deny":
        theirs["network_rule_collections"].append(
            {"name": "deny", "priority": 100,
             "rules": [{**draw(net_rule), "name": "r", "action": "deny"}]})
        theirs["application_rule_collections"].append(
            {"name": "deny", "priority": 100,
             "rules": [{**draw(app_rule), "name": "r", "action": "deny"}]})
    else:
        theirs = draw(policy_data())
    return Policy.model_validate(mine), Policy.model_validate(theirs)


NAMES = ["x.com", "a.x.com", "md-a.x.com", "md-prod.x.com", "b-prod.x.com", "q.a.x.com",
         "y.x.com", "a.y.x.com", "z.org", "a.z.org", "other.net"]
IPS = ["20.0.0.1", "21.5.5.5", "20.1.2.3", "10.1.2.3", "10.2.0.1", "8.8.8.8", "2600::1",
       "2600:1::5", "::ffff:20.1.2.3"]


def sampled_requests(rng: random.Random, count: int) -> list[Request]:
    """`count` requests over the pools the policies are drawn from (a seeded generator:
    hundreds per example cost less than a few drawn by hypothesis)."""
    out = []
    for _ in range(count):
        ip = rng.random() < 0.4
        host = rng.choice(IPS if ip else NAMES)
        port = rng.choice([80, 443, 8443, 1000, 1500, 2000, 2001, 53, 22])
        raw = rng.choice([None, "10.1.2.3", "10.1.9.9", "192.168.1.1"])
        source = ipaddress.ip_address(raw) if raw else None
        addresses = () if ip or rng.random() < 0.5 else (
            ipaddress.ip_address(rng.choice(IPS)),)
        kind = rng.choice(["http", "https", "connect", "tcp", "udp", "dns"])
        shown = f"[{host}]" if ":" in host else host
        if kind in ("http", "https"):
            out.append(Request(kind=Kind.HTTP, host="", uri=f"{kind}://{shown}:{port}/",
                               addresses=addresses, source=source))
        elif kind == "dns":
            out.append(Request(kind=Kind.DNS, host=host, protocol="udp", source=source))
        elif kind == "connect":
            out.append(Request(kind=Kind.CONNECT, host=host, port=port,
                               addresses=addresses, source=source))
        else:
            out.append(Request(kind=Kind.FLOW, host=host, port=port, protocol=kind,
                               addresses=addresses, source=source))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=pairs(), seed=st.integers(0, 2**32))
def test_the_prover_agrees_with_the_engine(pair: tuple[Policy, Policy], seed: int) -> None:
    """Whenever the prover says contained, no sampled request is permitted by the policy
    and refused by the ceiling; whenever it gives a counterexample, the engine agrees."""
    policy, ceiling = pair
    answer = contains(policy, ceiling)
    p, c = compile_policy(policy), compile_policy(ceiling)
    if answer.status == "contained":
        for probe in sampled_requests(random.Random(seed), 400):
            assert not (p.decide(probe).permitted and not c.decide(probe).permitted), probe
    elif answer.status == "exceeds":
        assert answer.counterexample is not None
        assert _confirmed(policy, ceiling, answer.counterexample)
