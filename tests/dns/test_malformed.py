"""Malformed questions sent as real packets over UDP and TCP to a running filter: each
gets FORMERR with the query's id (never a traceback, never an upstream query), and the
filter keeps serving. Names that are not DNS names at all (a 64-octet label, a name over
255 octets) are protocol errors, so they get FORMERR in report-only mode too."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable

import pytest
from dnslib import DNSRecord

from tests.dns.upstream_server import Upstream

pytestmark = pytest.mark.timeout(30)
Addr = tuple[str, int]
_ID = 0x5A5A


def _header(qdcount: int = 1) -> bytes:
    return struct.pack("!HHHHHH", _ID, 0x0100, qdcount, 0, 0, 0)


def _name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


_TAIL = struct.pack("!HH", 1, 1)  # QTYPE A, QCLASS IN
PACKETS = {
    "label-of-64-octets": _header() + _name(b"a" * 64, b"example", b"com") + _TAIL,
    "label-of-191-octets": _header() + _name(b"b" * 191, b"com") + _TAIL,
    "name-of-256-octets": _header() + _name(*[b"c" * 63] * 3, b"d" * 62) + _TAIL,
    "name-of-320-octets": _header() + _name(*[b"e" * 63] * 5) + _TAIL,
    "pointer-past-the-end": _header() + b"\x07example\xc0\xff" + _TAIL,
    "pointer-to-itself": _header() + b"\xc0\x0c" + _TAIL,
    "pointer-loop": _header() + b"\x01a\xc0\x0c" + _TAIL,
    "truncated-in-a-label": _header() + b"\x07exa",
    "truncated-before-qtype": _header() + _name(b"example", b"com") + b"\x00",
    "question-count-lies": _header(qdcount=3) + _name(b"example", b"com") + _TAIL,
}


def _udp(addr: Addr, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, addr)
        return sock.recv(65535)


def _tcp(addr: Addr, packet: bytes) -> bytes:
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(struct.pack("!H", len(packet)) + packet)
        head = b""
        while len(head) < 2:
            head += sock.recv(2 - len(head))
        (size,) = struct.unpack("!H", head)
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "connection closed before the answer"
            data += chunk
        return data


@pytest.mark.parametrize("report_only", [False, True], ids=["enforcing", "report-only"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_malformed_questions_get_formerr_never_a_traceback_nor_an_upstream_query(
        start_filter: Callable[..., Addr], upstream: Upstream, caplog: pytest.LogCaptureFixture,
        transport: str, report_only: bool) -> None:
    addr = start_filter(report_only=report_only)
    send = _udp if transport == "udp" else _tcp
    before = len(upstream.resolver.queries)
    with caplog.at_level(logging.DEBUG, "egressguard"):
        for kind, packet in PACKETS.items():
            reply = DNSRecord.parse(send(addr, packet))
            assert (reply.header.id, reply.header.qr, reply.header.rcode) == (_ID, 1, 1), kind
        good = DNSRecord.question("allowed.example.com")
        assert DNSRecord.parse(send(addr, bytes(good.pack()))).header.rcode == 0
    assert len(upstream.resolver.queries) == before + 1  # only the good one went upstream
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_sixty_three_octet_labels_and_a_255_octet_name_are_still_names(
        start_filter: Callable[..., Addr]) -> None:
    # The limits themselves are legal (RFC 1035): decided by the policy, not FORMERR.
    addr = start_filter()
    for packet in (_header() + _name(b"a" * 63, b"example", b"com") + _TAIL,
                   _header() + _name(*[b"c" * 63] * 3, b"d" * 61) + _TAIL):
        reply = DNSRecord.parse(_udp(addr, packet))
        assert reply.header.rcode in (0, 3)  # NOERROR / NXDOMAIN: a policy answer
