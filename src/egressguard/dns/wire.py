"""DNS messages in and out, through `dnslib` (no hand parsing): what the filter reads from a
query, and the answers it builds itself (refusals, FORMERR, SERVFAIL, truncation).

The hot path (a plain question, an answer of A/AAAA/CNAME/DNAME/SOA records) is read and
built by hand, with no dnslib objects; dnslib reads everything else and stays the
reference (tests/dns/test_wire_fuzz.py checks the two agree).

Everything here is pure: bytes or `DNSRecord` in, bytes or values out.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from dnslib import DNAME, HTTPS, OPCODE, QTYPE, RCODE, RDMAP, DNSBuffer, DNSHeader, DNSLabel
from dnslib import DNSRecord as DNSRecord
from dnslib import EDNSOption as EDNSOption

from egressguard.engine.normalize import IPAddress
from egressguard.errors import InputError

# RFC 8914 extended DNS error codes used by the filter.
EDE_OPTION = 15
EDE_OTHER = 0
EDE_BLOCKED = 15
EDE_NOT_READY = 14  # RFC 8914: not operational now (a suspended cluster)
EDE_NETWORK_ERROR = 23
_EDE_TEXT_MAX = 300

_DNS_PAYLOAD = 1232  # the EDNS buffer size advertised in our own answers (DNS flag day 2020)
_MIN_UDP = 512
_MAX_UDP = 4096
# Characters a host name label may carry on the wire. Anything else (a '.' inside a label,
# '%', spaces, raw UTF-8) could be read differently by the normaliser and by the upstream,
# so such names are refused rather than decided under one spelling and resolved under another.
_LABEL = re.compile(rb"[A-Za-z0-9_-]+")
_SVCB = 64
_MAX_LABEL = 63   # RFC 1035 2.3.4: octets per label ...
_MAX_NAME = 255   # ... and per name on the wire (length octets and the root included)
# dnslib has a DNAME class but leaves it out of its type map, so DNAME answers would parse
# as opaque bytes and their target (possibly compressed) could not be decided. Register it.
RDMAP.setdefault("DNAME", DNAME)
_HINT_KEYS = {4: 4, 6: 16}  # SvcParamKey ipv4hint / ipv6hint -> address length


class BadName(InputError, ValueError):
    """A name whose labels are not plain host name characters; the message is the reason."""


@dataclass(slots=True, eq=False)  # not frozen: a frozen __init__ costs a setattr per field
class Query:
    """The parts of a client query the filter acts on. `data` is the query as it goes
    upstream (the client's bytes when they are exactly one plain question and at most an
    OPT record, else a canonical rebuild): the question the policy decides is the question
    the upstream reads. `qkey` is the question name's wire form (the decision cache key)."""

    data: bytes
    qname: DNSLabel
    qkey: bytes
    qtype: int
    qclass: int
    qend: int           # offset just past the question
    edns: bool          # the client sent an OPT record (so it may get EDE back)
    udp_limit: int      # largest UDP answer the client accepts
    question: bytes     # the question section as the client sent it (data[12:qend])

    @property
    def qid(self) -> int:
        return int.from_bytes(self.data[:2], "big")

    @property
    def qtype_name(self) -> str:
        name = _TYPE_NAMES.get(self.qtype)
        if name is None:  # at most 65,536 of them
            name = _TYPE_NAMES[self.qtype] = str(QTYPE.get(self.qtype, f"TYPE{self.qtype}"))
        return name


_TYPE_NAMES: dict[int, str] = {}  # record type -> its name (dnslib's lookup is slow)


class Malformed(InputError, ValueError):
    """A packet that is not a usable query; `reply` is the FORMERR/NOTIMP answer, or None
    when not even a header could be read (the packet is then dropped)."""

    def __init__(self, reason: str, reply: bytes | None) -> None:
        super().__init__(reason)
        self.reply = reply


def _error_header(header: DNSHeader, rcode: int) -> DNSRecord:
    out = DNSHeader(id=header.id, qr=1, opcode=header.opcode, rd=header.rd, ra=1)
    out.rcode = rcode
    return DNSRecord(out)


_HEADER = struct.Struct("!HHHHHH")
# `_fast_query`'s reading of plain queries, by the query's bytes after its id (what it is
# a pure function of): a client asking the same question again costs one lookup. Bounded,
# and queries longer than _KNOWN_SIZE (large OPT records) are read every time.
_KNOWN: dict[bytes, tuple[DNSLabel, bytes, int, int, int, bool, int, bytes]] = {}
_KNOWN_MAX = 10000
_KNOWN_SIZE = 512
_QTAIL = struct.Struct("!HH")
_OPT = struct.Struct("!HHIH")
_RR = struct.Struct("!HHIH")


def parse_query(data: bytes) -> Query:
    """Read one client query; raise `Malformed` with the answer to send otherwise.

    The common shape (one question without compression, optionally one OPT record, nothing
    after) is read by hand; anything else goes through dnslib, whose verdicts (FORMERR,
    NOTIMP, drop) stay the reference for unusual packets."""
    data = bytes(data)  # a bytearray (dnslib's pack) would be an unhashable cache key
    known = _KNOWN.get(data[2:])
    if known is not None:
        return Query(data, *known)
    return _fast_query(data) or _slow_query(data)


def _fast_query(data: bytes, plain: bool = True) -> Query | None:
    """The query if `data` has the common shape, else None (not an error: ask dnslib).
    `plain`: also require host name characters in every label (else dnslib reads it); a
    plain query's reading is remembered in `_KNOWN`."""
    size = len(data)
    if size < 17:
        return None
    _qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # QR=0, OPCODE=QUERY
        return None
    pos = 12
    labels: list[bytes] = []
    while True:
        if pos >= size:
            return None
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > _MAX_LABEL:  # a pointer, or a 64..191 octet that is no DNS name
            return None
        raw = data[pos + 1:pos + 1 + length]
        if plain and not _LABEL.fullmatch(raw):  # unusual: dnslib's verdict counts
            return None
        labels.append(raw)
        pos += 1 + length
    if pos - 12 > _MAX_NAME:
        return None
    qname = DNSLabel(tuple(labels))
    if pos + 4 > size:
        return None
    qkey = data[12:pos]
    qtype, qclass = _QTAIL.unpack_from(data, pos)
    pos += 4
    qend = pos
    question = data[12:qend]
    edns = False
    limit = _MIN_UDP
    if ar:
        if pos + 11 > size or data[pos] != 0:
            return None
        rtype, rclass, _ttl, rdlen = _OPT.unpack_from(data, pos + 1)
        if rtype != QTYPE.OPT:
            return None
        pos += 11 + rdlen
        edns = True
        limit = max(_MIN_UDP, min(rclass, _MAX_UDP))
    if pos != size:
        return None
    if plain and size <= _KNOWN_SIZE:
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        _KNOWN[data[2:]] = (qname, qkey, qtype, qclass, qend, edns, limit, question)
    return Query(data, qname, qkey, qtype, qclass, qend, edns, limit, question)


def _slow_query(data: bytes) -> Query:
    if len(data) < 12:
        raise Malformed("shorter than a DNS header", None)
    try:
        record = DNSRecord.parse(data)
        header = record.header
    except Exception as exc:  # dnslib raises several types for bad input
        try:
            header = DNSHeader.parse(DNSBuffer(data))
        except Exception:
            raise Malformed(f"unreadable header: {exc}", None) from None
        if header.qr:
            raise Malformed("a response, not a query", None) from None
        rcode = RCODE.NOTIMP if header.opcode != OPCODE.QUERY else RCODE.FORMERR
        raise Malformed(f"unparseable query: {exc}",
                        _error_header(header, rcode).pack()) from None
    if header.qr:
        raise Malformed("a response, not a query", None)  # never answer answers (loops)
    if header.opcode != OPCODE.QUERY:
        raise Malformed(f"opcode {header.opcode} not supported",
                        _error_header(header, RCODE.NOTIMP).pack())
    if len(record.questions) != 1 or record.rr or record.auth:
        raise Malformed("a query must carry exactly one question",
                        _error_header(header, RCODE.FORMERR).pack())
    problem = wire_name_problem(record.questions[0].qname)
    if problem:
        # Not a DNS name at all (dnslib reads a 64..191 length octet as a label): nothing
        # could forward it, so it is a protocol error, answered without the question.
        raise Malformed(f"question name: {problem}", _error_header(header, RCODE.FORMERR).pack())
    # Rebuilt from what was read (one question, the client's flags and first OPT record),
    # never the client's raw bytes, so the upstream cannot read a different question.
    out = DNSHeader(id=header.id, rd=header.rd)
    out.cd = header.cd
    out.ad = header.ad
    canonical = DNSRecord(out, questions=[record.questions[0]])
    for rr in record.ar:
        if rr.rtype == QTYPE.OPT:
            canonical.add_ar(rr)
            break
    try:
        query = _fast_query(bytes(canonical.pack()), plain=False)
    except Exception:  # pragma: no cover - dnslib packs what it parsed
        query = None
    if query is None:
        raise Malformed("question cannot be forwarded as read",
                        _error_header(header, RCODE.FORMERR).pack())
    return query


def wire_name_problem(label: DNSLabel) -> str:
    """Why `label` cannot be a name on the wire (RFC 1035 limits), or "" if it can."""
    size = 1
    for raw in label.label:
        if len(raw) > _MAX_LABEL:
            return f"a label of {len(raw)} octets (at most {_MAX_LABEL})"
        size += len(raw) + 1
    if size > _MAX_NAME:
        return f"{size} octets long (at most {_MAX_NAME})"
    return ""


def name_text(label: DNSLabel) -> str:
    """The name as ASCII text without the trailing dot; `BadName` if a label is unusual."""
    parts = []
    for raw in label.label:
        if not _LABEL.fullmatch(bytes(raw)):
            raise BadName(f"invalid host: label {bytes(raw)!r} is not a host name label")
        parts.append(bytes(raw).decode("ascii"))
    return ".".join(parts)


def upstream_query(query: Query, qid: int) -> bytes:
    """The query sent upstream: the decided bytes with our own id."""
    return qid.to_bytes(2, "big") + query.data[2:]


def _ede(code: int, text: str) -> EDNSOption:
    data = text.encode("utf-8")[:_EDE_TEXT_MAX]
    return EDNSOption(EDE_OPTION, struct.pack("!H", code) + data)


def refusal(query: Query, rcode: int, ede_code: int | None = None, text: str = "") -> bytes:
    """An answer of our own (NXDOMAIN/REFUSED/SERVFAIL) to `query`, with an RFC 8914
    extended error carrying `text` when the client speaks EDNS (RFC 6891 forbids sending
    an OPT record to a client that did not). Built by hand: header, the question as the
    client sent it, and the OPT record."""
    flags = 0x8080 | (query.data[2] & 0x01) << 8 | (rcode & 0x0F)
    head = query.data[:2] + _HEADER.pack(0, flags, 1, 0, 0, 1 if query.edns else 0)[2:]
    if not query.edns:
        return head + query.question
    option = b""
    if ede_code is not None:
        payload = struct.pack("!H", ede_code) + text.encode("utf-8")[:_EDE_TEXT_MAX]
        option = struct.pack("!HH", EDE_OPTION, len(payload)) + payload
    return head + query.question + b"\x00" + _OPT.pack(QTYPE.OPT, _DNS_PAYLOAD, 0,
                                                          len(option)) + option


def fit_udp(query: Query, packed: bytes) -> bytes:
    """`packed` if it fits the client's UDP limit, else a truncated answer (TC set, question
    kept) so the client retries over TCP."""
    if len(packed) <= query.udp_limit:
        return packed
    flags = (packed[2] << 8 | packed[3]) | 0x0200
    return packed[:2] + _HEADER.pack(0, flags, 1, 0, 0, 0)[2:] + query.question


def same_question(query: Query, answer: DNSRecord | Scanned) -> bool:
    """The upstream answered the question we asked (names compare case-insensitively)."""
    if isinstance(answer, Scanned):
        return (answer.qtype == query.qtype and answer.qclass == query.qclass
                and answer.qname == query.qname)
    if len(answer.questions) != 1:
        return False
    got = answer.questions[0]
    return (got.qtype == query.qtype and got.qclass == query.qclass
            and got.qname == query.qname)


@dataclass(slots=True, eq=False)
class Scanned:
    """What the filter needs from an upstream answer, read without building dnslib objects:
    the question, the addresses handed to the client, the chain names (see `chain_names`),
    and the TTLs a cache may honour (`ttl`: smallest of the answer section, `negative_ttl`:
    the SOA's in the authority section, RFC 2308; None when absent)."""

    qname: DNSLabel
    qtype: int
    qclass: int
    rcode: int
    addresses: tuple[IPAddress, ...]
    chain: tuple[DNSLabel, ...]
    ttl: int | None
    negative_ttl: int | None
    answered: tuple[IPAddress, ...] = ()  # the answer section's A/AAAA only (a resolver's)


def _read_name(data: bytes, pos: int) -> tuple[tuple[bytes, ...], int] | None:
    """(labels, offset after the name) at `pos`, following only backward compression
    pointers (so no loop is possible); None for anything unusual."""
    labels: list[bytes] = []
    size = len(data)
    after = -1
    total = 1
    while True:
        if pos >= size:
            return None
        length = data[pos]
        if length == 0:
            return tuple(labels), (pos + 1 if after < 0 else after)
        if length >= 0xC0:
            if pos + 1 >= size:
                return None
            target = (length & 0x3F) << 8 | data[pos + 1]
            if target >= pos:
                return None
            if after < 0:
                after = pos + 2
            pos = target
            continue
        if length > _MAX_LABEL:
            return None
        total += length + 1
        if total > _MAX_NAME:
            return None
        labels.append(data[pos + 1:pos + 1 + length])
        pos += 1 + length


_A, _AAAA, _CNAME, _SOA, _DNAME, _HTTPS = 1, 28, 5, 6, 39, 65


def scan_answer(data: bytes) -> Scanned | None:
    """Read an upstream answer by hand; None when it holds anything the scanner does not
    read itself (HTTPS/SVCB records, odd lengths, forward pointers): dnslib then decides."""
    size = len(data)
    if size < 12:
        return None
    _qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if qd != 1:
        return None
    got = _read_name(data, 12)
    if got is None or got[1] + 4 > size:
        return None
    qlabels, pos = got
    qname = DNSLabel(qlabels)
    qtype, qclass = _QTAIL.unpack_from(data, pos)
    pos += 4
    found: list[IPAddress] = []
    answered: list[IPAddress] = []
    chain: list[DNSLabel] = []
    ttl: int | None = None
    negative: int | None = None
    for index in range(an + ns + ar):
        if data[pos:pos + 2] == b"\xc0\x0c":  # the question's name (the usual owner)
            owner_label: DNSLabel | None = qname
            pos += 2
        else:
            got = _read_name(data, pos)
            if got is None:
                return None
            owner_label, pos = None, got[1]
            owner = got[0]
        if pos + 10 > size:
            return None
        rtype, _rclass, rttl, rdlen = _RR.unpack_from(data, pos)
        pos += 10
        end = pos + rdlen
        if end > size:
            return None
        if index < an:
            chain.append(owner_label if owner_label is not None else DNSLabel(owner))
            ttl = rttl if ttl is None else min(ttl, rttl)
        if rtype in (_A, _AAAA):
            if rdlen != (4 if rtype == _A else 16):
                return None
            found.append(IPv4Address(data[pos:end]) if rdlen == 4 else IPv6Address(data[pos:end]))
            if index < an:
                answered.append(found[-1])
        elif rtype in (_CNAME, _DNAME):
            target = _read_name(data, pos)
            if target is None or target[1] != end:
                return None
            if index < an:
                chain.append(DNSLabel(target[0]))
        elif rtype in (_HTTPS, _SVCB):
            return None
        elif rtype == _SOA and an <= index < an + ns:
            mname = _read_name(data, pos)
            rname = _read_name(data, mname[1]) if mname else None
            if rname is None or rname[1] + 20 != end:
                return None
            minimum = struct.unpack_from("!I", data, end - 4)[0]
            negative = min(rttl, minimum) if negative is None else negative
        pos = end
    return Scanned(qname, qtype, qclass, flags & 0x0F, tuple(found),
                   tuple(chain), ttl, negative, tuple(answered))


def records(answer: DNSRecord) -> Iterator[object]:
    """Every resource record of an answer (answer, authority, additional sections)."""
    yield from answer.rr
    yield from answer.auth
    yield from answer.ar


def addresses(answer: DNSRecord | Scanned) -> tuple[IPAddress, ...]:
    """Every address an answer hands the client: A/AAAA records in any section and the
    ipv4hint/ipv6hint of HTTPS/SVCB records (browsers connect to those directly)."""
    if isinstance(answer, Scanned):
        return answer.addresses
    found: list[IPAddress] = []
    for rr in records(answer):
        rtype = rr.rtype  # type: ignore[attr-defined]
        rdata = rr.rdata  # type: ignore[attr-defined]
        if rtype in (QTYPE.A, QTYPE.AAAA):
            found.append(ipaddress.ip_address(bytes(rdata.data)))
        elif rtype in (QTYPE.HTTPS, _SVCB):
            params = rdata.params if isinstance(rdata, HTTPS) else _svcb_params(rdata)
            for key, value in params:
                size = _HINT_KEYS.get(key)
                if size is None:
                    continue
                for i in range(0, len(value) - size + 1, size):
                    found.append(ipaddress.ip_address(bytes(value[i:i + size])))
    return tuple(found)


def _svcb_params(rdata: object) -> list[tuple[int, bytes]]:
    data = bytes(getattr(rdata, "data", b""))
    return list(HTTPS.parse(DNSBuffer(data), len(data)).params)


def chain_names(answer: DNSRecord | Scanned) -> tuple[DNSLabel, ...]:
    """Names an answer leads the client to besides the question: CNAME/DNAME targets and
    the owners of answer-section records (an out-of-chain record is also a name)."""
    if isinstance(answer, Scanned):
        return answer.chain
    names: list[DNSLabel] = []
    for rr in answer.rr:
        names.append(rr.rname)
        if rr.rtype in (QTYPE.CNAME, QTYPE.DNAME):
            names.append(rr.rdata.label)
    return tuple(names)
