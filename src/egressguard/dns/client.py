"""Ask one DNS server for the addresses of one name: a tiny stub-resolver query built on the
filter's own wire code (`dns.wire`) and connected UDP pool (`dns.upstream`).

The gateway's resolver takes this as an injected `Ask` function (see
`gateway.resolver.Resolver(ask=...)`) rather than importing it, so the enforcement points
stay independent of each other; `cli/serve.py` wires the two together.
"""

from __future__ import annotations

import secrets
import struct

from egressguard.dns.upstream import UdpPool, UpstreamError
from egressguard.dns.wire import scan_answer
from egressguard.engine.normalize import IPAddress
from egressguard.errors import Unavailable


class AskFailed(Unavailable, OSError):
    """The server did not give a usable answer (timeout, SERVFAIL, a mismatched reply)."""


async def ask(server: tuple[str, int], name: str, qtype: int, timeout: float
              ) -> tuple[tuple[IPAddress, ...], int | None]:
    """(addresses, TTL) for `name` and `qtype` (1 = A, 28 = AAAA) from `server`. With no
    address the TTL is the negative one from the SOA (None when the answer carries none);
    NXDOMAIN is an answer, not an error."""
    qname = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", secrets.randbits(16), 0x0100, 1, 0, 0, 0) + qname \
        + struct.pack("!HH", qtype, 1)
    pool = UdpPool(server, size=1)
    try:
        raw = await pool.resolve(packet, timeout)
    except UpstreamError as exc:
        raise AskFailed(f"cannot resolve {name}: {exc}") from None
    finally:
        pool.close()
    scanned = scan_answer(raw)
    if scanned is None or scanned.qtype != qtype \
            or b".".join(scanned.qname.label).lower() != name.encode("ascii").lower():
        raise AskFailed(f"cannot resolve {name}: unusable answer from {server[0]}")
    if scanned.rcode not in (0, 3):  # SERVFAIL, REFUSED...: the caller tries the next one
        raise AskFailed(f"cannot resolve {name}: {server[0]} answered rcode {scanned.rcode}")
    wanted = 4 if qtype == 1 else 6
    found = tuple(a for a in scanned.answered if a.version == wanted)
    return found, scanned.ttl if found else scanned.negative_ttl
