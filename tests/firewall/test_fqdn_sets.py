"""DNS-learned address sets for FQDN network-rule destinations (`apply --watch`): the
pure parts (build, render, evaluate, TTL bookkeeping) and the lookups against a real
DNS server on loopback."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import RR, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from egressguard.firewall import Action, Options, Packet, build_ruleset, evaluate, render
from egressguard.firewall.build import fqdn_destinations
from egressguard.firewall.learned import LearnedAddresses
from egressguard.firewall.render import render_set_update
from egressguard.firewall.resolve import DnsLookup, HostsLookup, Lookups, ResolveError
from egressguard.policy import load_policy_text

POLICY = load_policy_text("""\
restrict_outbound_network_access: true
network_rule_collections:
  - name: time
    priority: 100
    rules:
      - {name: ntp, destinations: [ntp.Example.COM, 11.0.0.9], protocols: [udp], ports: [123]}
      - {name: wild, destinations: ['*.example.org'], protocols: [tcp], ports: [443]}
  - name: quiet
    priority: 200
    report_only: true
    rules:
      - {name: q, destinations: [quiet.example.com], protocols: [tcp], ports: [22]}
""", "t")
LEARNED = {"ntp.example.com": [("11.0.0.1", 30), ("2600::1", 20)]}


def _udp(ip: str, port: int = 123) -> Packet:
    return Packet("udp", ipaddress.ip_address(ip), port)


def test_only_exact_names_of_enforced_rules_get_sets() -> None:
    assert fqdn_destinations(POLICY) == ["ntp.example.com"]


def test_learned_addresses_pass_and_others_drop_like_the_kernel() -> None:
    ruleset = build_ruleset(POLICY, None, Options(fqdn_sets=True, learned=LEARNED))
    assert evaluate(ruleset, "output", _udp("11.0.0.1"))[0] is Action.ACCEPT
    assert evaluate(ruleset, "output", _udp("2600::1"))[0] is Action.ACCEPT
    assert evaluate(ruleset, "output", _udp("11.0.0.9"))[0] is Action.ACCEPT  # the literal
    assert evaluate(ruleset, "output", _udp("11.0.0.2"))[0] is Action.DROP
    assert evaluate(ruleset, "output", _udp("11.0.0.1", 124))[0] is Action.DROP


def test_sets_carry_timeouts_and_rules_stay_when_nothing_is_learned_yet() -> None:
    text = render(build_ruleset(POLICY, None, Options(fqdn_sets=True, learned=LEARNED)))
    assert "flags timeout" in text and "11.0.0.1 timeout 30s" in text
    assert "2600::1 timeout 20s" in text
    empty = render(build_ruleset(POLICY, None, Options(fqdn_sets=True)))
    assert "ip daddr @fqdn_0_v4 udp dport 123" in empty  # filled in later by the watcher
    assert "quiet.example.com" not in empty


def test_set_update_replaces_elements_in_one_transaction() -> None:
    ruleset = build_ruleset(POLICY, None, Options(fqdn_sets=True, learned=LEARNED))
    text = render_set_update("eg", [s for s in ruleset.sets if s.dynamic])
    assert text.splitlines() == [
        "flush set inet eg fqdn_0_v4",
        "add element inet eg fqdn_0_v4 { 11.0.0.1 timeout 30s }",
        "flush set inet eg fqdn_0_v6",
        "add element inet eg fqdn_0_v6 { 2600::1 timeout 20s }"]


def test_timeouts_never_exceed_the_ttl_and_names_are_looked_up_before_expiry() -> None:
    book = LearnedAddresses(max_ttl=100)
    book.learn("a.test", [("11.0.0.1", 10), ("11.0.0.2", 5000)], now=0.0)
    assert book.snapshot(0.0) == {"a.test": [("11.0.0.1", 10), ("11.0.0.2", 100)]}
    assert book.due(4.9) == [] and book.due(5.0) == ["a.test"]  # half the shortest TTL
    book.failed("a.test", now=5.0)  # the resolver is down: keep what is known...
    assert book.snapshot(9.0)["a.test"] == [("11.0.0.1", 1), ("11.0.0.2", 91)]
    assert book.snapshot(10.5)["a.test"] == [("11.0.0.2", 89)]  # ...until it expires
    book.keep_only([])
    assert book.snapshot(11.0) == {}


class _Zone(BaseResolver):  # type: ignore[misc]
    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        if str(request.q.qname) == "ntp.example.com.":
            reply.add_answer(*RR.fromZone("ntp.example.com. 42 IN A 11.0.0.1\n"
                                          "ntp.example.com. 7 IN AAAA 2600::1"))
            reply.rr = [rr for rr in reply.rr if rr.rtype == request.q.qtype]
        return reply


@pytest.fixture(scope="module")
def dns() -> Iterator[tuple[str, int]]:
    server = DNSServer(_Zone(), address="127.0.0.1", port=0,
                       logger=DNSLogger(log="-recv,-send,-request,-reply,-truncated,-data"))
    threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield "127.0.0.1", server.server.server_address[1]
    server.server.shutdown()
    server.server.server_close()


def test_dns_lookup_returns_addresses_with_their_ttls(dns: tuple[str, int]) -> None:
    assert DnsLookup(dns)("ntp.example.com") == [("11.0.0.1", 42), ("2600::1", 7)]
    assert DnsLookup(dns)("nothing.example.com") == []


def test_a_silent_resolver_is_an_error_not_an_empty_answer() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(ResolveError):
            DnsLookup(silent.getsockname(), timeout=0.2)("ntp.example.com")


def test_hosts_file_is_consulted_first(tmp_path: Path, dns: tuple[str, int]) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# lab\n11.0.0.5  NTP.example.com ntp\nnot-an-ip other.example.com\n")
    lookup = Lookups([HostsLookup(hosts, ttl=60), DnsLookup(dns)])
    assert lookup("ntp.example.com") == [("11.0.0.5", 60)]
    assert lookup("other.example.com") == []  # not in DNS either
