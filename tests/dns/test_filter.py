"""The DNS filter end to end: real packets from dnspython, through the filter, to a real
(dnslib) upstream on loopback. Named after what each test defends against."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import pytest
from dnslib import DNSQuestion, DNSRecord
from prometheus_client import REGISTRY

from egressguard.dns import CnameMode, DenyRcode, PolicyFileWatcher
from egressguard.engine.holder import SnapshotHolder
from tests.dns.conftest import POLICY, ListSink
from tests.dns.upstream_server import Upstream

pytestmark = pytest.mark.timeout(30)
Addr = tuple[str, int]


def ask(addr: Addr, name: str | dns.name.Name, rdtype: str = "A", *, tcp: bool = False,
        edns: bool = True) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, addr[0], port=addr[1], timeout=5)


def rcode(reply: dns.message.Message) -> str:
    return dns.rcode.to_text(reply.rcode())


def ede(reply: dns.message.Message) -> list[tuple[int, str]]:
    return [(int(e.code), e.text or "") for e in reply.extended_errors()]


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]


def raw_udp(addr: Addr, packet: bytes, wait: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(packet, addr)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


# -- the question ----------------------------------------------------------------------

def test_allowed_name_resolves(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "allowed.example.com")
    assert rcode(reply) == "NOERROR"
    assert addresses(reply) == ["93.184.216.34"]


def test_unlisted_name_gets_nxdomain_with_blocked_ede(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "evil.net")
    assert rcode(reply) == "NXDOMAIN"
    [(code, text)] = ede(reply)
    assert code == dns.edns.EDECode.BLOCKED
    assert "evil.net is not allowed" in text


def test_exfiltration_query_for_unlisted_domain_never_reaches_upstream(
        dnsfilter: Addr, upstream: Upstream) -> None:
    secret = "c2VjcmV0LWRhdGE.exfil.evil.net"
    reply = ask(dnsfilter, secret, "TXT")
    assert rcode(reply) == "NXDOMAIN"
    assert not any("exfil" in q for q in upstream.resolver.queries)


def test_deny_rule_name_is_refused_even_under_allowed_pattern(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "secret.blocked.net")
    assert rcode(reply) == "NXDOMAIN"
    assert "denied by application rule blocked/blocked-net" in ede(reply)[0][1]


def test_refused_rcode_when_configured(start_filter: Callable[..., Addr]) -> None:
    addr = start_filter(deny_rcode=DenyRcode.REFUSED)
    assert rcode(ask(addr, "evil.net")) == "REFUSED"


def test_client_without_edns_gets_no_opt_record(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "evil.net", edns=False)
    assert rcode(reply) == "NXDOMAIN"
    assert reply.edns == -1  # RFC 6891: no OPT in answers to queries without one


@pytest.mark.parametrize("spelling", ["ALLOWED.EXAMPLE.COM", "Allowed.Example.Com.",
                                      "UPPER.Test.ORG."])
def test_case_and_trailing_dot_spellings_are_normalised(dnsfilter: Addr, spelling: str) -> None:
    reply = ask(dnsfilter, spelling)
    assert rcode(reply) == "NOERROR"
    assert addresses(reply)


def test_idn_name_matches_its_unicode_policy_entry(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "bücher.test.org")  # sent as xn--bcher-kva.test.org
    assert rcode(reply) == "NOERROR"
    assert addresses(reply) == ["93.184.216.37"]


def test_raw_utf8_label_cannot_borrow_an_allowed_idn(dnsfilter: Addr,
                                                     upstream: Upstream) -> None:
    name = dns.name.Name(("bücher".encode(), b"test", b"org", b""))
    reply = ask(dnsfilter, name)
    assert rcode(reply) == "NXDOMAIN"
    assert "invalid host" in ede(reply)[0][1]
    assert not any(q.startswith("b\\") for q in upstream.resolver.queries)


def test_dot_inside_a_label_cannot_pose_as_an_allowed_subdomain(dnsfilter: Addr) -> None:
    # One label "evil.example" under "com": not a name under example.com.
    name = dns.name.Name((b"evil.example", b"com", b""))
    reply = ask(dnsfilter, name)
    assert rcode(reply) == "NXDOMAIN"
    assert "invalid host" in ede(reply)[0][1]


def test_percent_encoded_label_cannot_decode_into_an_allowed_name(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "a%2eexample.com")
    assert rcode(reply) == "NXDOMAIN"
    assert "invalid host" in ede(reply)[0][1]


def test_ip_literal_name_for_metadata_is_refused(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "169.254.169.254")
    assert rcode(reply) == "NXDOMAIN"


# -- the answer (DNS rebinding and aliasing) -------------------------------------------

@pytest.mark.parametrize(("name", "rdtype", "why"), [
    ("rebind.example.com", "A", "127.0.0.1 (loopback"),
    ("metadata.example.com", "A", "169.254.169.254 (link-local"),
    ("mixed.example.com", "A", "192.168.1.10 (private"),
    ("mapped.example.com", "AAAA", "127.0.0.1 (loopback"),
    ("hint.example.com", "HTTPS", "127.0.0.1 (loopback"),
    ("glue.example.com", "MX", "127.0.0.1 (loopback"),
    ("deepalias.example.com", "A", "169.254.169.254 (link-local"),
])
def test_rebinding_answer_is_refused(dnsfilter: Addr, name: str, rdtype: str,
                                     why: str) -> None:
    reply = ask(dnsfilter, name, rdtype)
    assert rcode(reply) == "NXDOMAIN"
    assert not reply.answer and not reply.additional
    [(code, text)] = ede(reply)
    assert code == dns.edns.EDECode.BLOCKED
    assert why in text


def test_private_answer_allowed_when_a_network_rule_names_its_cidr(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "internal.example.com")
    assert rcode(reply) == "NOERROR"
    assert addresses(reply) == ["10.1.2.3"]


def test_cname_to_cdn_that_no_rule_names_still_resolves(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "cdn.example.com")
    assert rcode(reply) == "NOERROR"
    assert addresses(reply) == ["93.184.216.35"]


def test_cname_into_a_denied_domain_is_refused(dnsfilter: Addr) -> None:
    reply = ask(dnsfilter, "alias.example.com")
    assert rcode(reply) == "NXDOMAIN"
    assert "leads to secret.blocked.net" in ede(reply)[0][1]


def test_strict_cname_mode_requires_every_name_in_the_chain(
        start_filter: Callable[..., Addr]) -> None:
    addr = start_filter(cname_mode=CnameMode.STRICT)
    reply = ask(addr, "cdn.example.com")
    assert rcode(reply) == "NXDOMAIN"
    assert "leads to edge.cdn-provider.net" in ede(reply)[0][1]


def test_addresses_cname_mode_ignores_names_but_still_guards_addresses(
        start_filter: Callable[..., Addr]) -> None:
    addr = start_filter(cname_mode=CnameMode.ADDRESSES)
    assert rcode(ask(addr, "alias.example.com")) == "NOERROR"
    assert rcode(ask(addr, "deepalias.example.com")) == "NXDOMAIN"


# -- report-only, audit, metrics -------------------------------------------------------

def test_report_only_resolves_and_records_the_would_be_denial(
        start_filter: Callable[..., Addr], sink: ListSink) -> None:
    addr = start_filter(report_only=True)
    reply = ask(addr, "evil.net")
    assert rcode(reply) == "NOERROR"
    assert addresses(reply) == ["93.184.216.39"]
    [event] = [e for e in sink.events if e.host == "evil.net"]
    assert (event.verdict, event.permitted, event.layer) == ("deny", True, "default")


def test_every_decision_is_emitted_and_counted(dnsfilter: Addr, sink: ListSink) -> None:
    labels = {"kind": "dns", "verdict": "deny", "layer": "guard", "permitted": "false"}
    before = REGISTRY.get_sample_value("egressguard_decisions_total", labels) or 0.0
    ask(dnsfilter, "rebind.example.com", tcp=True)
    ask(dnsfilter, "allowed.example.com")
    denied, allowed = sink.events[-2:]
    assert denied.kind == "dns" and denied.host == "rebind.example.com"
    assert (denied.verdict, denied.permitted, denied.layer) == ("deny", False, "guard")
    assert denied.resolved_address == "127.0.0.1" and denied.protocol == "tcp"
    assert denied.method == "A" and len(denied.policy_version) == 12
    assert denied.client_address == "127.0.0.1"
    assert (allowed.verdict, allowed.permitted, allowed.rule) == (
        "allow", True, "application:allowed/example")
    after = REGISTRY.get_sample_value("egressguard_decisions_total", labels)
    assert after == before + 1


# -- transports and robustness ---------------------------------------------------------

def test_tcp_queries_are_filtered_too(dnsfilter: Addr) -> None:
    assert addresses(ask(dnsfilter, "allowed.example.com", tcp=True)) == ["93.184.216.34"]
    assert rcode(ask(dnsfilter, "evil.net", tcp=True)) == "NXDOMAIN"


def test_answer_too_big_for_udp_is_truncated_and_complete_over_tcp(dnsfilter: Addr) -> None:
    # The upstream truncates at 512 bytes, so the filter itself must retry over TCP.
    reply = ask(dnsfilter, "big.example.com", "TXT")
    assert reply.flags & dns.flags.TC and not reply.answer
    full, used_tcp = dns.query.udp_with_fallback(
        dns.message.make_query("big.example.com", "TXT", use_edns=0), dnsfilter[0],
        port=dnsfilter[1], timeout=5)
    assert used_tcp and len(full.answer[0]) == 10


def test_malformed_query_gets_formerr_and_server_keeps_serving(dnsfilter: Addr) -> None:
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    reply = raw_udp(dnsfilter, header + b"\x07example\xc0\xff\x00\x01")  # bad pointer
    assert reply is not None
    parsed = DNSRecord.parse(reply)
    assert parsed.header.id == 0x1234 and parsed.header.rcode == 1  # FORMERR
    assert rcode(ask(dnsfilter, "allowed.example.com")) == "NOERROR"


@pytest.mark.parametrize("packet", [b"", b"\x00", b"\xff" * 11,
                                    struct.pack("!HHHHHH", 7, 0x8000, 0, 0, 0, 0)],
                         ids=["empty", "one-byte", "short-header", "a-response"])
def test_unanswerable_packet_is_dropped_and_server_keeps_serving(dnsfilter: Addr,
                                                                packet: bytes) -> None:
    assert raw_udp(dnsfilter, packet, wait=0.3) is None
    assert rcode(ask(dnsfilter, "allowed.example.com")) == "NOERROR"


def test_two_questions_in_one_query_get_formerr(dnsfilter: Addr) -> None:
    query = DNSRecord(q=DNSQuestion("allowed.example.com"))
    query.add_question(DNSQuestion("evil.net"))
    reply = raw_udp(dnsfilter, bytes(query.pack()))
    assert reply is not None and DNSRecord.parse(reply).header.rcode == 1


def test_update_opcode_gets_notimp(dnsfilter: Addr) -> None:
    query = dns.message.make_query("allowed.example.com", "A")
    query.set_opcode(dns.opcode.UPDATE)
    reply = raw_udp(dnsfilter, query.to_wire())
    assert reply is not None and DNSRecord.parse(reply).header.rcode == 4  # NOTIMP


def test_garbage_over_tcp_gets_formerr_then_connection_still_serves(dnsfilter: Addr) -> None:
    good = dns.message.make_query("allowed.example.com", "A").to_wire()
    bad = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x3f"
    with socket.create_connection(dnsfilter, timeout=5) as sock:
        for packet in (bad, good):
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            (size,) = struct.unpack("!H", sock.recv(2))
            data = b""
            while len(data) < size:
                data += sock.recv(size - len(data))
            rc = DNSRecord.parse(data).header.rcode
            assert rc == (1 if packet is bad else 0)


def test_upstream_timeout_gives_servfail_with_network_error(dnsfilter: Addr) -> None:
    started = time.monotonic()
    reply = ask(dnsfilter, "slow.example.com")
    assert rcode(reply) == "SERVFAIL"
    assert ede(reply)[0][0] == dns.edns.EDECode.NETWORK_ERROR
    assert time.monotonic() - started < 2.5


def test_dead_upstream_gives_servfail(start_filter: Callable[..., Addr]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
    addr = start_filter(upstream=dead, timeout=0.3)
    assert rcode(ask(addr, "allowed.example.com")) == "SERVFAIL"


def test_flood_beyond_inflight_bound_gets_servfail_not_a_queue(
        start_filter: Callable[..., Addr]) -> None:
    addr = start_filter(max_inflight=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        slow = dns.message.make_query("slow.example.com", "A", use_edns=0)
        fast = dns.message.make_query("allowed.example.com", "A", use_edns=0)
        sock.sendto(slow.to_wire(), addr)
        time.sleep(0.1)
        sock.sendto(fast.to_wire(), addr)
        first = dns.message.from_wire(sock.recv(65535))
    assert first.id == fast.id and rcode(first) == "SERVFAIL"
    assert "too many queries in flight" in ede(first)[0][1]


# -- hot reload ------------------------------------------------------------------------

def test_policy_edit_applies_to_next_query_and_bad_edit_changes_nothing(
        dnsfilter: Addr, holder: SnapshotHolder, policy_file: Path) -> None:
    watcher = PolicyFileWatcher(policy_file, holder)
    assert rcode(ask(dnsfilter, "evil.net")) == "NXDOMAIN"
    policy_file.write_text(POLICY.replace("upper.test.org]", "upper.test.org, evil.net]"))
    assert watcher.poll()
    assert rcode(ask(dnsfilter, "evil.net")) == "NOERROR"
    version = holder.active.version
    policy_file.write_text(POLICY + "callouts: [{callout_type: sql, uri_regex: '(a'}]\n")
    assert not watcher.poll()
    assert watcher.last_error and "invalid regular expression" in watcher.last_error
    assert holder.active.version == version
    assert rcode(ask(dnsfilter, "evil.net")) == "NOERROR"
