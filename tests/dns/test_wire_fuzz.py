"""The hand-written wire path against dnslib, the reference: on random valid queries and
answers both read the same question, addresses and chain names; on random bytes and
mutated packets the fast reader never raises, and whenever it accepts a query dnslib reads
the very same single question (no parser differential a client could use to have one
question decided and another resolved)."""

from __future__ import annotations

import contextlib

import pytest
from dnslib import AAAA, CNAME, DNAME, EDNS0, MX, QTYPE, RCODE, RR, SOA, TXT, A, DNSLabel, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressguard.dns.wire import (
    Malformed,
    Query,
    _fast_query,
    addresses,
    chain_names,
    parse_query,
    scan_answer,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
label = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                min_size=1, max_size=20)
names = st.lists(label, min_size=1, max_size=5).map(lambda parts: ".".join(parts) + ".")
qtypes = st.sampled_from(["A", "AAAA", "CNAME", "MX", "TXT", "HTTPS", "ANY", "SOA"])
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


def _query(name: str, qtype: str, edns: int | None, qid: int) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = qid
    if edns is not None:
        record.add_ar(EDNS0(udp_len=edns))
    return bytes(record.pack())


@FUZZ
@given(names, qtypes, st.one_of(st.none(), st.integers(0, 65535)), st.integers(0, 65535))
def test_fast_query_reads_what_dnslib_reads(name: str, qtype: str, edns: int | None,
                                            qid: int) -> None:
    packet = _query(name, qtype, edns, qid)
    fast = _fast_query(packet)
    assert fast is not None, "a plain query must take the fast path"
    ref = DNSRecord.parse(packet)
    assert fast.qname == ref.q.qname and fast.qname.label == ref.q.qname.label
    assert (fast.qtype, fast.qclass, fast.qid) == (ref.q.qtype, ref.q.qclass, qid)
    assert fast.edns == (edns is not None)
    if edns is not None:
        assert fast.udp_limit == max(512, min(edns, 4096))


record = st.one_of(
    st.tuples(st.just("A"), ipv4), st.tuples(st.just("AAAA"), ipv6),
    st.tuples(st.just("CNAME"), names), st.tuples(st.just("DNAME"), names),
    st.tuples(st.just("MX"), names), st.tuples(st.just("TXT"), label))
_RDATA = {"A": A, "AAAA": AAAA, "CNAME": CNAME, "DNAME": DNAME, "MX": MX, "TXT": TXT}


def _rr(owner: str, kind: str, value: str, ttl: int) -> RR:
    return RR(owner, getattr(QTYPE, kind), rdata=_RDATA[kind](value), ttl=ttl)


@FUZZ
@given(names, st.lists(st.tuples(names, record, st.integers(0, 2**31 - 1)), max_size=6),
       st.lists(st.tuples(names, record, st.integers(0, 2**31 - 1)), max_size=3),
       st.one_of(st.none(), st.integers(0, 2**31 - 1)))
def test_answer_scan_agrees_with_dnslib(name: str, answer: list[tuple[str, tuple[str, str], int]],
                                        extra: list[tuple[str, tuple[str, str], int]],
                                        soa_ttl: int | None) -> None:
    reply = DNSRecord.question(name).reply()
    for owner, (kind, value), ttl in answer:
        reply.add_answer(_rr(owner, kind, value, ttl))
    if soa_ttl is not None:
        reply.add_auth(RR(name, QTYPE.SOA, ttl=soa_ttl, rdata=SOA(
            "ns." + name, "admin." + name, (1, 2, 3, 4, 300))))
    for owner, (kind, value), ttl in extra:
        reply.add_ar(_rr(owner, kind, value, ttl))
    packed = bytes(reply.pack())  # dnslib compresses names: pointers are exercised
    scanned = scan_answer(packed)
    assert scanned is not None
    ref = DNSRecord.parse(packed)
    assert scanned.qname == ref.q.qname and scanned.qtype == ref.q.qtype
    assert scanned.addresses == addresses(ref)
    assert [n.label for n in scanned.chain] == [n.label for n in chain_names(ref)]
    assert scanned.ttl == (min(t for _, _, t in answer) if answer else None)
    assert scanned.negative_ttl == (None if soa_ttl is None else min(soa_ttl, 300))


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_malformed(data: bytes) -> None:
    with contextlib.suppress(Malformed):
        parse_query(data)
    scan_answer(data)  # None or a reading; never an exception


@FUZZ
@given(names, qtypes, st.one_of(st.none(), st.integers(0, 65535)),
       st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
       st.binary(max_size=8))
def test_mutated_queries_accepted_fast_are_read_identically_by_dnslib(
        name: str, qtype: str, edns: int | None, flips: list[tuple[int, int]],
        tail: bytes) -> None:
    packet = bytearray(_query(name, qtype, edns, 0x1234))
    for offset, value in flips:
        if offset < len(packet):
            packet[offset] = value
    data = bytes(packet) + tail
    try:
        query = parse_query(data)
    except Malformed:
        return
    fast = _fast_query(data)
    if fast is None:
        # dnslib's path: the upstream gets a canonical rebuild of what was decided
        assert _fast_query(query.data, plain=False) is not None
        rebuilt, ref = DNSRecord.parse(query.data), DNSRecord.parse(data)
        assert rebuilt.q.qname.label == ref.q.qname.label == query.qname.label
        assert (rebuilt.q.qtype, rebuilt.q.qclass) == (ref.q.qtype, ref.q.qclass)
        return
    ref = DNSRecord.parse(data)  # the fast path accepted it: dnslib must read it alike
    assert len(ref.questions) == 1 and not ref.rr and not ref.auth
    assert fast.qname.label == ref.q.qname.label
    assert (fast.qtype, fast.qclass) == (ref.q.qtype, ref.q.qclass)
    assert query.data == data  # forwarded as the client sent it


@FUZZ
@given(names, st.lists(st.tuples(names, record, st.integers(0, 3600)), min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), min_size=1, max_size=3))
def test_mutated_answers_scanned_agree_with_dnslib_when_it_reads_them(
        name: str, answer: list[tuple[str, tuple[str, str], int]],
        flips: list[tuple[int, int]]) -> None:
    reply = DNSRecord.question(name).reply()
    for owner, (kind, value), ttl in answer:
        reply.add_answer(_rr(owner, kind, value, ttl))
    packet = bytearray(reply.pack())
    for offset, value in flips:
        if offset < len(packet):
            packet[offset] = value
    scanned = scan_answer(bytes(packet))
    if scanned is None:
        return
    try:
        ref = DNSRecord.parse(bytes(packet))
        ref_addresses, ref_chain = addresses(ref), chain_names(ref)
    except Exception:
        # dnslib cannot read it at all; the scan must at least be self-consistent
        assert all(isinstance(n, DNSLabel) for n in scanned.chain)
        return
    assert scanned.addresses == ref_addresses
    assert [n.label for n in scanned.chain] == [n.label for n in ref_chain]


@pytest.mark.parametrize("packet", [
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # self pointer
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x01a\x00\x00\x01\x00\x01junk",
])
def test_unusual_queries_leave_the_fast_path(packet: bytes) -> None:
    assert _fast_query(packet) is None


def _fields(query: Query) -> tuple[object, ...]:
    return (query.data, query.qname.label, query.qkey, query.qtype, query.qclass, query.qend,
            query.edns, query.udp_limit, query.question)


@FUZZ
@given(names, qtypes, st.one_of(st.none(), st.integers(0, 65535)), st.integers(0, 65535),
       st.integers(0, 65535))
def test_a_remembered_query_reads_as_a_fresh_one_with_its_own_id(
        name: str, qtype: str, edns: int | None, first: int, again: int) -> None:
    parse_query(_query(name, qtype, edns, first))
    data = _query(name, qtype, edns, again)
    remembered, fresh = parse_query(data), _fast_query(data)
    assert fresh is not None and _fields(remembered) == _fields(fresh)
    assert remembered.qid == again


@pytest.mark.parametrize(("flip", "reply"), [
    (0x80, None),   # QR: the same bytes as a response are never answered
    (0x28, "NOTIMP"),  # opcode UPDATE
])
def test_a_remembered_question_is_no_query_with_other_flags(flip: int, reply: str | None
                                                            ) -> None:
    data = _query("remembered.example.com.", "A", 1232, 7)
    parse_query(data)
    other = bytearray(data)
    other[2] |= flip
    with pytest.raises(Malformed) as refused:
        parse_query(bytes(other))
    got = refused.value.reply
    assert (None if got is None else DNSRecord.parse(got).header.rcode) == (
        None if reply is None else getattr(RCODE, reply))
