"""A tiny real upstream DNS server for the filter's tests and benchmark (dnslib, loopback).

It serves fixed records, including names that rebind to loopback, link-local metadata and
private addresses, CNAME chains, an HTTPS record with an address hint, an answer too big
for UDP, and a name that never answers in time.
"""

from __future__ import annotations

import socketserver
import threading
import time
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

ZONE = """
allowed.example.com.      60 IN A     93.184.216.34
allowed.example.com.      60 IN AAAA  2606:2800:220:1:248:1893:25c8:1946
rebind.example.com.       60 IN A     127.0.0.1
metadata.example.com.     60 IN A     169.254.169.254
mixed.example.com.        60 IN A     93.184.216.34
mixed.example.com.        60 IN A     192.168.1.10
mapped.example.com.       60 IN AAAA  ::ffff:7f00:1
internal.example.com.     60 IN A     10.1.2.3
cdn.example.com.          60 IN CNAME edge.cdn-provider.net.
edge.cdn-provider.net.    60 IN A     93.184.216.35
alias.example.com.        60 IN CNAME secret.blocked.net.
secret.blocked.net.       60 IN A     93.184.216.36
deepalias.example.com.    60 IN CNAME hop.cdn-provider.net.
hop.cdn-provider.net.     60 IN CNAME metadata.cdn-provider.net.
metadata.cdn-provider.net. 60 IN A    169.254.169.254
hint.example.com.         60 IN HTTPS 1 . alpn=h2 ipv4hint=127.0.0.1
glue.example.com.         60 IN MX    10 mail.example.com.
xn--bcher-kva.test.org.   60 IN A     93.184.216.37
upper.test.org.           60 IN A     93.184.216.38
evil.net.                 60 IN A     93.184.216.39
"""
BIG = "big.example.com."
SLOW = "slow.example.com."


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.records: dict[str, list[RR]] = {}
        for rr in RR.fromZone(ZONE):
            self.records.setdefault(str(rr.rname).lower(), []).append(rr)
        self.records[BIG] = [RR.fromZone(f'{BIG} 60 IN TXT "{i}{"x" * 200}"')[0]
                             for i in range(10)]
        self.queries: list[str] = []
        self.slow = 3.0

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower()
        self.queries.append(name)
        if name == SLOW:
            time.sleep(self.slow)
        qtype = request.q.qtype
        found = False
        current = name
        for _ in range(8):  # follow CNAMEs inside the zone, as a recursive resolver would
            rrs = self.records.get(current, [])
            found = found or bool(rrs)
            cname = [r for r in rrs if r.rtype == QTYPE.CNAME]
            if cname and qtype != QTYPE.CNAME:
                reply.add_answer(*cname)
                current = str(cname[0].rdata.label).lower()
                continue
            reply.add_answer(*[r for r in rrs if r.rtype == qtype or qtype == QTYPE.ANY])
            if name.startswith("glue."):
                reply.add_ar(*RR.fromZone("mail.example.com. 60 IN A 127.0.0.1"))
            break
        if not found:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class _Handler(DNSHandler):  # type: ignore[misc]
    udplen = 512  # truncate big UDP answers, so the filter must retry over TCP


class _Quiet(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-error,-data")


class Upstream:
    """UDP and TCP on one loopback port, each on a thread."""

    def __init__(self) -> None:
        self.resolver = ZoneResolver()
        for attempt in range(20):
            # UDP takes a free port; TCP on the same number may be taken (a shared host).
            self.udp = DNSServer(self.resolver, address="127.0.0.1", port=0,
                                 logger=_Quiet(), handler=_Handler)
            self.port: int = self.udp.server.server_address[1]
            try:
                self.tcp = DNSServer(self.resolver, address="127.0.0.1", port=self.port,
                                     tcp=True, logger=_Quiet(), handler=_Handler)
                break
            except OSError:
                self.udp.server.server_close()
                if attempt == 19:
                    raise
        self.address = ("127.0.0.1", self.port)

    def start(self) -> Upstream:
        for server in (self.udp, self.tcp):
            server.server.daemon_threads = True
            server.server.handle_error = lambda *args: None  # connections cut at teardown
            threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True).start()
        return self

    def stop(self) -> None:
        for server in (self.udp, self.tcp):
            server.server.shutdown()
            server.server.server_close()


__all__ = ["BIG", "SLOW", "Upstream", "socketserver"]
