"""Address sets as the kernel sees them: raw destination addresses, no canonicalisation.

The engine maps IPv6 forms that carry an IPv4 address (mapped `::ffff:a.b.c.d`, NAT64
`64:ff9b::a.b.c.d`, compatible `::a.b.c.d`) to that IPv4 address before matching, and its
address guard also looks inside 6to4 (`2002:V4::/48`). nftables compares the packet's
destination as it is, so every prefix is translated here into the set of raw addresses
the engine would treat as inside it. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from egressguard.engine.guard import SPECIAL_RANGES

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network

MAPPED = V6("::ffff:0:0/96")
NAT64 = V6("64:ff9b::/96")
COMPAT = V6("::/96")  # minus :: and ::1, which stay IPv6 (unspecified, loopback)
NOT_COMPAT = V6("::/127")
SIX_TO_FOUR = V6("2002::/16")


def collapse(nets: Iterable[Net]) -> tuple[Net, ...]:
    """Sorted, non-overlapping prefixes (nftables interval sets reject overlaps)."""
    nets = list(nets)
    v4 = [n for n in nets if isinstance(n, V4)]
    v6 = [n for n in nets if isinstance(n, V6)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


def subtract(nets: Iterable[Net], hole: Net) -> list[Net]:
    """`nets` without the addresses of `hole`."""
    out: list[Net] = []
    for net in nets:
        if net.version != hole.version or not net.overlaps(hole):
            out.append(net)
        elif hole.subnet_of(net):  # type: ignore[arg-type]
            out.extend(net.address_exclude(hole))  # type: ignore[arg-type]
        # else: net lies inside the hole and disappears
    return out


def _embed(net: V4, base: V6, offset: int = 96) -> V6:
    """`net` placed at bit `offset` inside `base` (e.g. NAT64 `64:ff9b::10.0.0.0/104`)."""
    value = int(base.network_address) | (int(net.network_address) << (128 - offset - 32))
    return V6((value, offset + net.prefixlen))


def _compat(net: V4) -> list[Net]:
    return subtract([_embed(net, COMPAT)], NOT_COMPAT)


def raw_destinations(net: Net) -> tuple[Net, ...]:
    """Every raw address the engine treats as inside the network-rule prefix `net`."""
    if isinstance(net, V4):
        return collapse([net, _embed(net, MAPPED), _embed(net, NAT64), *_compat(net)])
    rest: list[Net] = [net]
    for hole in (MAPPED, NAT64, COMPAT):
        rest = subtract(rest, hole)
    for kept in (V6("::/128"), V6("::1/128")):  # not embedded forms: still plain IPv6
        if kept.subnet_of(net):
            rest.append(kept)
    return collapse(rest)


def special_destinations() -> tuple[Net, ...]:
    """Raw addresses the address guard refuses (`engine.guard.special_range` is not None)."""
    v4 = [V4(p) for p in SPECIAL_RANGES if ":" not in p]
    v6 = [V6(p) for p in SPECIAL_RANGES if ":" in p]
    plain: list[Net] = list(v6)
    for hole in (MAPPED, NAT64, COMPAT, SIX_TO_FOUR):  # judged by the IPv4 inside
        plain = subtract(plain, hole)
    plain += [V6("::/128"), V6("::1/128")]
    out: list[Net] = [*v4, *plain]
    for net in v4:
        out += [_embed(net, MAPPED), _embed(net, NAT64), *_compat(net),
                _embed(net, SIX_TO_FOUR, 16)]
    return collapse(out)
