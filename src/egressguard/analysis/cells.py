"""The request space of two policies, cut into cells that both decide uniformly.

Containment and reachability questions ("does policy P allow anything ceiling C does
not?", "what does version B open that version A did not?") are answered exactly, not by
sampling, by partitioning every dimension of a request by the boundaries either policy
mentions, so that inside one cell no rule of either policy can tell two requests apart:

* **names**: a name is matched by the patterns `a.b`, `*.b`, `.b`, `g*.b` and `*` only
  through its longest suffix `s` among the patterns' domains D (or the name itself when
  it is in D) and, when exactly one label sits above `s`, which label globs hanging from
  `s` that label satisfies. So the classes are: each name of D; `L.s` for every subset
  of `s`'s globs some valid label realises (found by a breadth-first walk of the product
  of the globs' automata, with LDH validity as one more component); and `a.b.s` (two or
  more labels above `s`).
* **addresses and sources**: intervals between the boundaries of every CIDR either policy
  names (rules, service tags, trusted ranges, sources, IP literals as name targets).
  Inside such an interval the only thing left that tells addresses apart is the address
  guard (special or not; it is the same function in both policies), so each interval
  has at most two representatives: a guarded and a public address. IPv6 addresses the
  engine rewrites to the IPv4 address they carry (mapped, NAT64, compatible) are the IPv4
  cells; 6to4 addresses, which the guard judges by their IPv4 address, are split by it.
* **ports**: intervals between every port or range either policy names, and 80/443 (the
  allowed-FQDN list's ports).
* **kinds**: http and https URLs, CONNECT tunnels, DNS questions and tcp/udp/icmp flows,
  by name or by IP literal, with no resolved address or one address of each class a rule
  or trusted range names (an address outside them changes no decision but the guard's,
  which is the same function in both policies and only ever denies).

One representative request per cell is decided by the real engine (`Snapshot.decide`),
so first-match-wins ordering, deny rules, report-only collections, the address guard and
trusted ranges are exactly the engine's. The cell count is bounded; past the bound the
caller is told the space is too large rather than given a partial answer.
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from egressguard.engine import Kind, References, Request
from egressguard.engine.guard import SPECIAL_RANGES
from egressguard.errors import InputError
from egressguard.policy.model import Policy, is_service_tag, validate_host_pattern

MAX_CELLS = 150_000  # about 20 s of deciding on a loaded machine
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_FRESH = ("zq", "zqx", "zqy", "zqz", "qzw", "qzv")
_CANONICAL_V6 = ((int(ipaddress.IPv6Address("::ffff:0:0")), 96),
                 (int(ipaddress.IPv6Address("64:ff9b::")), 96), (2, 0))
"""IPv6 addresses the engine rewrites to the IPv4 address they carry before matching
anything (mapped, NAT64, compatible `::a.b.c.d` but `::` and `::1`): their cells are the
IPv4 cells. (value, prefix length); `(2, 0)` stands for ::2 .. ::ffff:ffff."""
_SIX_TO_FOUR = int(ipaddress.IPv6Address("2002::"))

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class TooLarge(InputError, ValueError):
    """The two policies cut the request space into more than `MAX_CELLS` cells."""


@dataclass(frozen=True)
class Cell:
    """One uniform region of the request space and the request that stands for it."""

    request: Request
    line: str  # the representative in `simulate` syntax
    kind: str  # http, https, connect, dns, flow/tcp, flow/udp, flow/icmp
    destination: str  # the class: `api.x.com`, `*.x.com (e.g. zq.x.com)`, an IP range
    ports: tuple[int, int] | None
    source: str  # `any` or an IP range
    address: str = ""  # the resolved-address class of a request by name, if any

    def region(self) -> str:
        port = "" if self.ports is None else (
            f" port {self.ports[0]}" if self.ports[0] == self.ports[1]
            else f" ports {self.ports[0]}-{self.ports[1]}")
        via = f" resolving into {self.address}" if self.address else ""
        src = "" if self.source == "any" else f" from {self.source}"
        return f"{self.kind} {self.destination}{via}{port}{src}"


# -- names -------------------------------------------------------------------------------


def host_patterns(policy: Policy, refs: References) -> list[str]:
    """Every host pattern the policy's name rules and FQDN network destinations use."""
    out = list(policy.allowed_fqdn_list)
    for collection in policy.application_rule_collections:
        for rule in collection.rules:
            out.extend(rule.targets)
            for tag in rule.fqdn_tags:
                out.extend(validate_host_pattern(p) for p in refs.fqdn_tags.get(tag, ()))
    for ncol in policy.network_rule_collections:
        for nrule in ncol.rules:
            out.extend(d for d in nrule.destinations if _is_name(d))
    return out


def _is_name(dest: str) -> bool:
    if dest == "*" or is_service_tag(dest):
        return False
    try:
        ipaddress.ip_network(dest)
    except ValueError:
        return True
    return False


def _glob_step(glob: str, states: frozenset[int], char: str) -> frozenset[int]:
    out: set[int] = set()
    for i in states:
        if i < len(glob) and glob[i] == "*":
            out.add(i)
        elif i < len(glob) and glob[i] == char:
            out.add(i + 1)
    return _glob_close(glob, out)


def _glob_close(glob: str, states: Iterable[int]) -> frozenset[int]:
    out = set(states)
    stack = list(out)
    while stack:
        i = stack.pop()
        if i < len(glob) and glob[i] == "*" and i + 1 not in out:
            out.add(i + 1)
            stack.append(i + 1)
    return frozenset(out)


def glob_witnesses(globs: Sequence[str], avoid: set[str]) -> list[str]:
    """One valid DNS label for every subset of `globs` some label matches exactly
    (breadth-first over the product automaton; shortest witnesses first). `avoid`: labels
    not to return (they make a name that is its own class)."""
    used = {c for g in globs for c in g if c != "*"}
    fresh = next(c for c in _ALNUM if c not in used)
    alphabet = sorted(used | {fresh})
    start = (tuple(_glob_close(g, {0}) for g in globs), 0)  # ldh: 0 empty, 1 ok, 2 '-'
    seen = {start}
    frontier: list[tuple[tuple[tuple[frozenset[int], ...], int], str]] = [(start, "")]
    found: dict[frozenset[int], str] = {}
    while frontier:
        nxt = []
        for (states, ldh), label in frontier:
            if ldh == 1 and label not in avoid:
                key = frozenset(i for i, g in enumerate(globs) if len(g) in states[i])
                found.setdefault(key, label)
            if len(label) >= 63:
                continue
            for char in alphabet:
                if char == "-" and ldh == 0:
                    continue
                step = (tuple(_glob_step(g, s, char) for g, s in zip(globs, states,
                                                                    strict=True)),
                        2 if char == "-" else 1)
                if step not in seen:
                    seen.add(step)
                    nxt.append((step, label + char))
        frontier = nxt
    return list(found.values())


def name_classes(patterns: Iterable[str]) -> list[tuple[str, str]]:
    """(representative name, class description) for every class of names the patterns
    tell apart (module docstring)."""
    domains: set[str] = set()
    globs: dict[str, list[str]] = {}
    for pattern in set(patterns):
        if pattern == "*":
            continue
        if pattern.startswith("*."):
            domains.add(pattern[2:])
        elif pattern.startswith("."):
            domains.add(pattern[1:])
        elif "*" in pattern:
            label, _, parent = pattern.partition(".")
            domains.add(parent)
            globs.setdefault(parent, []).append(label)
        else:
            domains.add(pattern)
    out = [(d, d) for d in sorted(domains)]
    for suffix in sorted(domains | {""}):
        dot = f".{suffix}" if suffix else ""
        avoid = {n[: -len(dot)] if dot else n for n in domains
                 if n.endswith(dot) and "." not in (n[: -len(dot)] if dot else n)}
        labels = glob_witnesses(sorted(set(globs.get(suffix, []))), avoid)
        for label in labels:
            shown = f"*{dot}" if not globs.get(suffix) else f"{label}{dot}"
            out.append((f"{label}{dot}", f"{shown} (one label, e.g. {label}{dot})"
                        if shown.startswith("*") else shown))
        deep = _fresh_deep(suffix, domains)
        out.append((deep, f"*.*{dot} (two or more labels, e.g. {deep})" if suffix
                    else f"any other name (e.g. {deep})"))
    return [(name, desc) for name, desc in out if name and _valid_name(name)]


def _fresh_deep(suffix: str, domains: set[str]) -> str:
    dot = f".{suffix}" if suffix else ".zqtld"
    for a, b in itertools.product(_FRESH, repeat=2):
        name = f"{a}.{b}{dot}"
        if f"{b}{dot}" not in domains and name not in domains:
            return name
    raise AssertionError("no fresh name")  # _FRESH has 36 pairs; D cannot hold them all


def _valid_name(name: str) -> bool:
    from egressguard.engine.normalize import InvalidHost, normalize_host

    try:
        return normalize_host(name).ip is None
    except InvalidHost:
        return False


# -- addresses, ports, sources -------------------------------------------------------------


def policy_networks(policy: Policy, refs: References) -> list[str]:
    """Every CIDR a network rule (directly or through a service tag) or trusted range
    names."""
    out = list(policy.trusted_ranges)
    for collection in policy.network_rule_collections:
        for rule in collection.rules:
            for dest in rule.destinations:
                if is_service_tag(dest):
                    out.extend(refs.service_tags.get(dest, ()))
                elif dest != "*" and not _is_name(dest):
                    out.append(dest)
    return out


def policy_sources(policy: Policy) -> list[str]:
    found = [s for c in policy.application_rule_collections for r in c.rules
             for s in r.sources]
    found += [s for c in policy.network_rule_collections for r in c.rules for s in r.sources]
    return found


def _canonical_spans() -> list[tuple[int, int]]:
    out = []
    for value, length in _CANONICAL_V6:
        if length == 0:
            out.append((2, (1 << 32) - 1))
        else:
            out.append((value, value + (1 << (128 - length)) - 1))
    return out


def _guard_spans(version: int) -> list[tuple[int, int]]:
    """The guard's special ranges as sorted, merged integer spans (IPv6: also 6to4
    addresses carrying a special IPv4 address, which the guard judges by that)."""
    nets = [ipaddress.ip_network(p) for p in SPECIAL_RANGES]
    spans = [(int(n.network_address), int(n.broadcast_address)) for n in nets
             if n.version == version]
    if version == 6:
        for n in nets:
            if n.version == 4:
                low = _SIX_TO_FOUR + (int(n.network_address) << 80)
                spans.append((low, low + (1 << (80 + 32 - n.prefixlen)) - 1))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


_GUARD = {4: _guard_spans(4), 6: _guard_spans(6)}
_CANONICAL = _canonical_spans()


def intervals(networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network],
              version: int, *, cuts_only: bool = False
              ) -> list[tuple[int, int, bool]]:
    """(first, last, named) for each interval of one address family between the
    boundaries of `networks`; `named` when inside one of them. For destinations
    (`cuts_only` false) the IPv6 ranges the engine rewrites to IPv4 are left out."""
    size = 32 if version == 4 else 128
    mine = [n for n in (ipaddress.ip_network(x, strict=False) for x in networks)
            if n.version == version]
    cuts = {0, 1 << size}
    for net in mine:
        cuts.add(int(net.network_address))
        cuts.add(int(net.broadcast_address) + 1)
    skip: list[tuple[int, int]] = []
    if version == 6 and not cuts_only:
        skip = _CANONICAL
        for low, high in skip:
            cuts.update((low, high + 1))
    spans = [(int(n.network_address), int(n.broadcast_address)) for n in mine]
    out = []
    for low, high in itertools.pairwise(sorted(cuts)):
        if any(a <= low <= b for a, b in skip):
            continue
        out.append((low, high - 1, any(a <= low <= b for a, b in spans)))
    return out


def representatives(low: int, high: int, version: int) -> list[tuple[IPAddr, bool]]:
    """(address, special) for at most two addresses of [low, high]: one the address guard
    refuses and one it does not, where the interval has them. Inside an interval whose
    addresses every rule treats alike, that is the only difference left."""
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    special: int | None = None
    plain: int | None = low
    for a, b in _GUARD[version]:
        if b < low or a > high:
            continue
        if special is None:
            special = max(a, low)
        if plain is not None and a <= plain <= b:
            plain = b + 1 if b < high else None
    out = []
    if plain is not None:
        out.append((cls(plain), False))
    if special is not None:
        out.append((cls(special), True))
    return out


def port_intervals(policy: Policy) -> set[int]:
    cuts = {1, 80, 81, 443, 444, 65536}
    for collection in policy.application_rule_collections:
        for rule in collection.rules:
            for spec in rule.protocols:
                if spec.port is not None:
                    cuts.update((spec.port, spec.port + 1))
    for ncol in policy.network_rule_collections:
        for nrule in ncol.rules:
            for pr in nrule.ports:
                cuts.update((max(pr.low, 1), pr.high + 1))
    return cuts


def _span(low: IPAddr, high: IPAddr) -> str:
    if low == high:
        return str(low)
    nets = list(ipaddress.summarize_address_range(low, high))
    return str(nets[0]) if len(nets) == 1 else f"{low}-{high}"


def _classes(spans: list[tuple[int, int, bool]], version: int, named_only: bool
             ) -> list[tuple[IPAddr, str]]:
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    out = []
    for low, high, named in spans:
        if named_only and not named:
            continue
        shown = _span(cls(low), cls(high))
        for ip, special in representatives(low, high, version):
            out.append((ip, f"{shown} ({'guarded' if special else 'public'} part)"))
    return out


def _host_text(ip: IPAddr) -> str:
    return f"[{ip}]" if ip.version == 6 else str(ip)


# -- the cells -----------------------------------------------------------------------------


def cells(policies: Sequence[Policy], refs: References,
          limit: int = MAX_CELLS) -> Iterator[Cell]:
    """Every cell of the request space the `policies` induce; raises `TooLarge` (before
    yielding anything) past `limit`."""
    patterns = [p for pol in policies for p in host_patterns(pol, refs)]
    names = name_classes(patterns)
    nets = [n for pol in policies for n in policy_networks(pol, refs)]
    literal = [f"{p}/{32 if ':' not in p else 128}" for p in patterns if not _is_name(p)
               and p != "*"]  # an IP literal as a name rule target
    dest_ips = [c for v in (4, 6) for c in _classes(intervals(nets + literal, v), v, False)]
    named_ips = [c for v in (4, 6) for c in _classes(intervals(nets, v), v, True)]
    cuts = sorted(set().union(*(port_intervals(p) for p in policies)))
    ports = list(itertools.pairwise(cuts))
    ports = [(lo, hi - 1) for lo, hi in ports]
    srcs = [s for pol in policies for s in policy_sources(pol)]
    sources: list[tuple[IPAddr, IPAddr] | None] = [None]
    for version, cls in ((4, ipaddress.IPv4Address), (6, ipaddress.IPv6Address)):
        sources += [(cls(lo), cls(hi)) for lo, hi, named in intervals(
            srcs, version, cuts_only=True) if named]
    per_name = (1 + len(named_ips)) * len(sources)
    total = (len(names) * (per_name * (5 * len(ports) + 1) + len(sources))
             + len(dest_ips) * len(sources) * (5 * len(ports) + 1))
    if total > limit:
        raise TooLarge(f"the policies cut the request space into about {total} cells "
                       f"(more than {limit}); split the question or simplify the rules")
    yield from _name_cells(names, named_ips, ports, sources)
    yield from _ip_cells(dest_ips, ports, sources)


def _options(source: tuple[IPAddr, IPAddr] | None, address: IPAddr | None = None) -> str:
    out = ""
    if address is not None:
        out += f" address={address}"
    if source is not None:
        out += f" source={source[0]}"
    return out


def _name_cells(names: list[tuple[str, str]], named_ips: list[tuple[IPAddr, str]],
                ports: list[tuple[int, int]], sources: list[tuple[IPAddr, IPAddr] | None]
                ) -> Iterator[Cell]:
    addresses: list[tuple[IPAddr, str] | None] = [None, *named_ips]
    for (name, desc), source, span in itertools.product(names, sources, addresses):
        src = source[0] if source else None
        src_text = "any" if source is None else _span(*source)
        addr = span[0] if span else None
        addrs = (addr,) if addr is not None else ()
        via = span[1] if span else ""
        opts = _options(source, addr)
        for low, high in ports:
            for scheme in ("http", "https"):
                yield Cell(Request(kind=Kind.HTTP, host="", uri=f"{scheme}://{name}:{low}/",
                                   addresses=addrs, source=src),
                           f"{scheme}://{name}:{low}/{opts}", scheme, desc, (low, high),
                           src_text, via)
            yield Cell(Request(kind=Kind.CONNECT, host=name, port=low, addresses=addrs,
                               source=src),
                       f"connect {name}:{low}{opts}", "connect", desc, (low, high), src_text,
                       via)
            for proto in ("tcp", "udp"):
                yield Cell(Request(kind=Kind.FLOW, host=name, port=low, protocol=proto,
                                   addresses=addrs, source=src),
                           f"flow {name}:{low}/{proto}{opts}",
                           f"flow/{proto}", desc, (low, high), src_text, via)
        yield Cell(Request(kind=Kind.FLOW, host=name, protocol="icmp", addresses=addrs,
                           source=src),
                   f"flow {name}/icmp{opts}", "flow/icmp", desc, None, src_text, via)
        if span is None:  # last: a URL or a tunnel is the clearer counterexample
            yield Cell(Request(kind=Kind.DNS, host=name, protocol="udp", source=src),
                       f"dns {name}{opts}", "dns", desc, None, src_text)


def _ip_cells(dest_ips: list[tuple[IPAddr, str]], ports: list[tuple[int, int]],
              sources: list[tuple[IPAddr, IPAddr] | None]) -> Iterator[Cell]:
    for (low_ip, desc), source in itertools.product(dest_ips, sources):
        src = source[0] if source else None
        src_text = "any" if source is None else _span(*source)
        host = _host_text(low_ip)
        opts = _options(source)
        yield Cell(Request(kind=Kind.FLOW, host=str(low_ip), protocol="icmp", source=src),
                   f"flow {host}/icmp{opts}", "flow/icmp", desc, None, src_text)
        for low, high in ports:
            for scheme in ("http", "https"):
                yield Cell(Request(kind=Kind.HTTP, host="", uri=f"{scheme}://{host}:{low}/",
                                   source=src),
                           f"{scheme}://{host}:{low}/{opts}", scheme, desc, (low, high),
                           src_text)
            yield Cell(Request(kind=Kind.CONNECT, host=str(low_ip), port=low, source=src),
                       f"connect {host}:{low}{opts}", "connect", desc, (low, high), src_text)
            for proto in ("tcp", "udp"):
                yield Cell(Request(kind=Kind.FLOW, host=str(low_ip), port=low,
                                   protocol=proto, source=src),
                           f"flow {host}:{low}/{proto}{opts}",
                           f"flow/{proto}", desc, (low, high), src_text)
