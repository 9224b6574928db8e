"""A real Squid running `export --format squid` agrees with the engine: for random policies
and random absolute-form HTTP and CONNECT requests, Squid lets through exactly what
`Snapshot.decide` permits, and, for policies with constructs Squid cannot express, never
more than that (the export narrows, it never widens)."""

from __future__ import annotations

import ipaddress
import random
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressguard.engine import Request, compile_policy
from egressguard.engine.request import Kind
from egressguard.export.squid import export_squid
from egressguard.policy import Policy
from tests.export.squidrun import Parent, running_squid

pytestmark = pytest.mark.skipif(shutil.which("squid") is None and not shutil.which(
    "/usr/sbin/squid"), reason="squid is not installed (apt-get install squid)")

HOSTS = {  # name -> the address Squid's hosts_file and the engine's request carry
    "b.com": "8.8.4.1", "a.b.com": "8.8.4.2", "x.b.com": "8.8.4.3", "y.x.b.com": "8.8.4.4",
    "md-12.x.b.com": "8.8.4.5", "e.net": "9.9.9.1", "q.e.net": "9.9.9.2",
    "md-1.e.net": "8.8.8.8", "other.org": "8.8.5.1", "intranet.b.com": "10.0.0.5",
    "meta.e.net": "169.254.169.254", "evil-b.com": "8.8.5.2",
}
LITERALS = ["8.8.8.8", "9.9.9.9", "10.1.2.3", "127.0.0.1"]
PATTERNS = ["b.com", ".b.com", "*.b.com", "x.b.com", ".x.b.com", "*.x.b.com", "md-*.e.net",
            "md-*.x.b.com", "e.net", "*.e.net", "*", "other.org", "8.8.8.8"]
SPECS = ["http:80", "https:443", "http:8080", "http:*", "https:*", "mssql:1433",
         "https:8443"]
NET_DESTS = ["9.9.9.0/24", "8.8.8.8/32", "*.e.net", "b.com", "*", ".x.b.com"]
NET_ALLOW_DESTS = ["8.8.0.0/16", "10.0.0.0/8", "other.org", "*", "169.254.169.254/32"]
PORTS = [80, 443, "*", "8000-9000", "1433"]
SOURCES = ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]


def _policy(rnd: random.Random, wide: bool) -> Policy:
    apps = []
    for c in range(rnd.randint(1, 3)):
        rules = []
        for r in range(rnd.randint(1, 4)):
            rule: dict[str, object] = {
                "name": f"r{r}", "targets": rnd.sample(PATTERNS, rnd.randint(1, 3)),
                "protocols": rnd.sample(SPECS, rnd.randint(1, 3))}
            if rnd.random() < 0.35:
                rule["action"] = rnd.choice(["allow", "deny"])
            if rnd.random() < 0.2:
                rule["sources"] = rnd.sample(SOURCES, rnd.randint(1, 2))
            rules.append(rule)
        apps.append({"name": f"a{c}", "priority": rnd.choice([100, 200, 300]),
                     "action": rnd.choice(["allow", "allow", "deny"]),
                     "report_only": rnd.random() < 0.15, "rules": rules})
    nets = []
    for c in range(rnd.randint(0, 2)):
        rules = []
        for r in range(rnd.randint(1, 3)):
            allow = wide and rnd.random() < 0.5
            rule = {"name": f"n{r}",
                    "destinations": rnd.sample(NET_ALLOW_DESTS if allow else NET_DESTS,
                                               rnd.randint(1, 2)),
                    "action": "allow" if allow else "deny",
                    "protocols": rnd.sample(["tcp", "udp", "any"], rnd.randint(1, 2)),
                    "ports": rnd.sample(PORTS, rnd.randint(1, 2))}
            if rnd.random() < 0.2:
                rule["sources"] = rnd.sample(SOURCES, 1)
            rules.append(rule)
        nets.append({"name": f"n{c}", "priority": rnd.choice([100, 200]),
                     "report_only": rnd.random() < 0.15, "rules": rules})
    return Policy.model_validate({
        "restrict_outbound_network_access": rnd.random() < 0.75,
        "report_only": wide and rnd.random() < 0.1,
        "allowed_fqdn_list": rnd.sample(PATTERNS[:-1], rnd.randint(0, 2)),
        "application_rule_collections": apps, "network_rule_collections": nets})


def _requests(rnd: random.Random, count: int) -> Iterator[tuple[bytes, Request]]:
    source = ipaddress.ip_address("127.0.0.1")
    for _ in range(count):
        literal = rnd.random() < 0.15
        host = rnd.choice(LITERALS if literal else list(HOSTS))
        addresses = () if literal else (ipaddress.ip_address(HOSTS[host]),)
        if rnd.random() < 0.5:
            port = rnd.choice([443, 8443, 1433, 80, 22])
            head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
            yield head.encode(), Request(kind=Kind.CONNECT, host=host, port=port,
                                         addresses=addresses, source=source)
        else:
            port = rnd.choice([80, 80, 8080, 443])
            authority = host if port == 80 else f"{host}:{port}"
            head = f"GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n"
            yield head.encode(), Request.from_url(f"http://{authority}/",
                                                  addresses=addresses, source=source)


@pytest.fixture(scope="module")
def parent() -> Iterator[Parent]:
    up = Parent()
    yield up
    up.close()


def _verdicts(policy: Policy, parent: Parent, rnd: random.Random
              ) -> Iterator[tuple[bytes, bool, bool]]:
    snapshot = compile_policy(policy)
    exported = export_squid(policy)
    with running_squid(exported.text, HOSTS, parent) as squid:
        for head, request in _requests(rnd, 30):
            yield head, not squid.denies(head), snapshot.decide(request).permitted


@settings(max_examples=15, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
def test_squid_lets_through_exactly_what_the_engine_permits(parent: Parent,
                                                            rnd: random.Random) -> None:
    policy = _policy(rnd, wide=False)
    for head, squid, engine in _verdicts(policy, parent, rnd):
        assert squid == engine, (
            f"{head!r}: squid {'allows' if squid else 'denies'}, engine "
            f"{'permits' if engine else 'denies'}\n{export_squid(policy).text}\n"
            f"{policy.model_dump_json(indent=1, exclude_defaults=True)}")


@settings(max_examples=12, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
def test_exported_squid_never_allows_what_the_engine_denies(parent: Parent,
                                                            rnd: random.Random) -> None:
    policy = _policy(rnd, wide=True)
    for head, squid, engine in _verdicts(policy, parent, rnd):
        assert engine or not squid, (
            f"{head!r}: squid allows what the engine denies\n{export_squid(policy).text}\n"
            f"{policy.model_dump_json(indent=1, exclude_defaults=True)}")
