"""Looking up FQDN network-rule destinations with their TTLs (the I/O of `learned`).

`DnsLookup` asks one resolver (A and AAAA over UDP, TCP when truncated) and keeps every
address record of the answer with its TTL; `HostsLookup` reads a hosts-style file
(`IP name...` per line, re-read at each lookup, fixed TTL), for names no DNS server
knows. `Lookups` tries each in turn.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from egressguard.errors import Unavailable
from egressguard.firewall.learned import Answer

MAX_ANSWERS = 64  # per name and type: a hostile resolver cannot fill the kernel set


class ResolveError(Unavailable, OSError):
    """No answer from the resolver (or an unreadable one)."""


class Lookup(Protocol):
    def __call__(self, name: str) -> list[Answer] | None:
        """The name's addresses and TTLs; [] for no such name; None for "not mine"."""


class DnsLookup:
    def __init__(self, server: tuple[str, int], timeout: float = 2.0) -> None:
        self.server = server
        self.timeout = timeout

    def __call__(self, name: str) -> list[Answer] | None:
        from dnslib import QTYPE, RCODE, DNSRecord

        out: list[Answer] = []
        for qtype in ("A", "AAAA"):
            question = DNSRecord.question(name, qtype)
            question.header.id = secrets.randbelow(65536)
            try:
                raw = question.send(self.server[0], self.server[1], timeout=self.timeout)
                reply = DNSRecord.parse(raw)
                if reply.header.tc:
                    reply = DNSRecord.parse(question.send(self.server[0], self.server[1],
                                                          tcp=True, timeout=self.timeout))
            except Exception as exc:  # timeouts, refused, garbage: all "no answer"
                raise ResolveError(f"{name} {qtype} via {self.server[0]}:{self.server[1]}: "
                                   f"{exc or type(exc).__name__}") from None
            if reply.header.id != question.header.id:
                raise ResolveError(f"{name}: answer to another question")
            if reply.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
                raise ResolveError(f"{name} {qtype}: {RCODE.get(reply.header.rcode)}")
            want = QTYPE.A if qtype == "A" else QTYPE.AAAA
            records = [rr for rr in reply.rr if rr.rtype == want][:MAX_ANSWERS]
            out += [(str(ipaddress.ip_address(str(rr.rdata))), int(rr.ttl))
                    for rr in records]
        return out


class HostsLookup:
    def __init__(self, path: Path, ttl: int = 300) -> None:
        self.path = path
        self.ttl = ttl

    def __call__(self, name: str) -> list[Answer] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ResolveError(f"{self.path}: {exc}") from None
        found: list[Answer] = []
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2 or name not in (f.lower().rstrip(".") for f in fields[1:]):
                continue
            try:
                found.append((str(ipaddress.ip_address(fields[0])), self.ttl))
            except ValueError:
                continue
        return found[:MAX_ANSWERS] or None


class Lookups:
    def __init__(self, lookups: Sequence[Lookup]) -> None:
        self.lookups = list(lookups)

    def __call__(self, name: str) -> list[Answer]:
        for lookup in self.lookups:
            found = lookup(name)
            if found is not None:
                return found
        return []
