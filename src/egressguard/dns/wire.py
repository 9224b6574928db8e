"""DNS messages in and out, through `dnslib` (no hand parsing): what the filter reads from a
query, and the answers it builds itself (refusals, FORMERR, SERVFAIL, truncation).

Everything here is pure: bytes or `DNSRecord` in, bytes or values out.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from dnslib import DNAME, EDNS0, HTTPS, OPCODE, QTYPE, RCODE, RDMAP, DNSBuffer, DNSHeader, DNSLabel
from dnslib import DNSRecord as DNSRecord
from dnslib import EDNSOption as EDNSOption

from egressguard.engine.normalize import IPAddress
from egressguard.errors import InputError

# RFC 8914 extended DNS error codes used by the filter.
EDE_OPTION = 15
EDE_OTHER = 0
EDE_BLOCKED = 15
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


@dataclass(frozen=True, slots=True)
class Query:
    """The parts of a client query the filter acts on."""

    record: DNSRecord
    qname: DNSLabel
    qtype: int
    edns: bool          # the client sent an OPT record (so it may get EDE back)
    udp_limit: int      # largest UDP answer the client accepts

    @property
    def qtype_name(self) -> str:
        return str(QTYPE.get(self.qtype, f"TYPE{self.qtype}"))


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


def parse_query(data: bytes) -> Query:
    """Read one client query; raise `Malformed` with the answer to send otherwise."""
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
    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    limit = _MIN_UDP
    if opts:
        limit = max(_MIN_UDP, min(opts[0].rclass, _MAX_UDP))
    question = record.questions[0]
    problem = wire_name_problem(question.qname)
    if problem:
        # Not a DNS name at all (dnslib reads a 64..191 length octet as a label): nothing
        # could forward it, so it is a protocol error, answered without the question.
        raise Malformed(f"question name: {problem}", _error_header(header, RCODE.FORMERR).pack())
    return Query(record, question.qname, question.qtype, bool(opts), limit)


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
    """The query sent upstream: rebuilt from what was decided (one question, the client's
    flags and EDNS options), never the client's raw bytes, so the upstream cannot read a
    different question than the one the policy saw."""
    src = query.record.header
    header = DNSHeader(id=qid, rd=src.rd)
    header.cd = src.cd
    header.ad = src.ad
    record = DNSRecord(header, questions=[query.record.questions[0]])
    for rr in query.record.ar:
        if rr.rtype == QTYPE.OPT:
            record.add_ar(rr)
            break
    return bytes(record.pack())


def _ede(code: int, text: str) -> EDNSOption:
    data = text.encode("utf-8")[:_EDE_TEXT_MAX]
    return EDNSOption(EDE_OPTION, struct.pack("!H", code) + data)


def refusal(query: Query, rcode: int, ede_code: int | None = None, text: str = "") -> bytes:
    """An answer of our own (NXDOMAIN/REFUSED/SERVFAIL) to `query`, with an RFC 8914
    extended error carrying `text` when the client speaks EDNS (RFC 6891 forbids sending
    an OPT record to a client that did not)."""
    src = query.record.header
    header = DNSHeader(id=src.id, qr=1, rd=src.rd, ra=1)
    header.rcode = rcode
    reply = DNSRecord(header, questions=[query.record.questions[0]])
    if query.edns:
        opts = [_ede(ede_code, text)] if ede_code is not None else []
        reply.add_ar(EDNS0(udp_len=_DNS_PAYLOAD, opts=opts))
    return bytes(reply.pack())


def fit_udp(query: Query, packed: bytes) -> bytes:
    """`packed` if it fits the client's UDP limit, else a truncated answer (TC set, question
    kept) so the client retries over TCP."""
    if len(packed) <= query.udp_limit:
        return packed
    answer = DNSRecord.parse(packed)
    header = DNSHeader(id=answer.header.id, bitmap=answer.header.bitmap)
    header.tc = 1
    reply = DNSRecord(header, questions=list(answer.questions))
    return bytes(reply.pack())


def same_question(query: Query, answer: DNSRecord) -> bool:
    """The upstream answered the question we asked (names compare case-insensitively)."""
    if len(answer.questions) != 1:
        return False
    got = answer.questions[0]
    return (got.qtype == query.qtype and got.qclass == query.record.questions[0].qclass
            and got.qname == query.qname)


def records(answer: DNSRecord) -> Iterator[object]:
    """Every resource record of an answer (answer, authority, additional sections)."""
    yield from answer.rr
    yield from answer.auth
    yield from answer.ar


def addresses(answer: DNSRecord) -> tuple[IPAddress, ...]:
    """Every address an answer hands the client: A/AAAA records in any section and the
    ipv4hint/ipv6hint of HTTPS/SVCB records (browsers connect to those directly)."""
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


def chain_names(answer: DNSRecord) -> tuple[DNSLabel, ...]:
    """Names an answer leads the client to besides the question: CNAME/DNAME targets and
    the owners of answer-section records (an out-of-chain record is also a name)."""
    names: list[DNSLabel] = []
    for rr in answer.rr:
        names.append(rr.rname)
        if rr.rtype in (QTYPE.CNAME, QTYPE.DNAME):
            names.append(rr.rdata.label)
    return tuple(names)
