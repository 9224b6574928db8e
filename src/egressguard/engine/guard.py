"""The address guard (semantics §4, step 2): addresses no egress should reach by default.

Cloud metadata endpoints, loopback and private ranges are where server-side request
forgery and DNS rebinding lead; they are denied unless a network rule names them.
"""

from __future__ import annotations

import pytricia

from egressguard.engine.normalize import IPAddress, embedded_ipv4

SPECIAL_RANGES: dict[str, str] = {
    "0.0.0.0/8": "unspecified",
    "10.0.0.0/8": "private",
    "100.64.0.0/10": "cgnat",
    "127.0.0.0/8": "loopback",
    "169.254.0.0/16": "link-local",
    "172.16.0.0/12": "private",
    "192.0.0.0/24": "ietf-protocol",
    "192.0.2.0/24": "documentation",
    "192.168.0.0/16": "private",
    "198.18.0.0/15": "benchmark",
    "198.51.100.0/24": "documentation",
    "203.0.113.0/24": "documentation",
    "224.0.0.0/4": "multicast",
    "240.0.0.0/4": "reserved",
    "255.255.255.255/32": "broadcast",
    "::/128": "unspecified",
    "::1/128": "loopback",
    "fc00::/7": "unique-local",
    "fe80::/10": "link-local",
    "fec0::/10": "site-local",
    "ff00::/8": "multicast",
    "2001:db8::/32": "documentation",
    "2001:2::/48": "benchmark",
    "100::/64": "discard",
}

_V4 = pytricia.PyTricia(32)
_V6 = pytricia.PyTricia(128)
for _prefix, _label in SPECIAL_RANGES.items():
    (_V6 if ":" in _prefix else _V4)[_prefix] = _label


def special_range(ip: IPAddress) -> str | None:
    """The special-purpose class of `ip` (e.g. `link-local`), or None for a public address.

    IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by
    the IPv4 address they carry.
    """
    if ip.version == 6:
        inner = embedded_ipv4(ip)
        if inner is None and ip.packed[:2] == b"\x20\x02":  # 6to4 2002:V4ADDR::/48
            from ipaddress import IPv4Address

            inner = IPv4Address(ip.packed[2:6])
        if inner is not None:
            return _V4.get(inner)
        return _V6.get(ip)
    return _V4.get(ip)
