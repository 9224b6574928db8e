"""What the gateway decides on its own, without I/O: plain values in, plain values out.

The policy's verdicts come from the engine through the checkpoint; these are the checks
a forward proxy must add around them (policy semantics §5), kept here so that they can
be read in one place and tested from tables without sockets (`tests/gateway/test_decide.py`):

* `http_target` - an HTTP request's target: absolute-form `http://` only, exactly one
  Host equal to the URI authority, HTTP/1.0 without Host decided by the authority (and
  given that authority as its Host upstream), no Content-Length + Transfer-Encoding.
* `connect_target` - a CONNECT authority: `host:port`, port required.
* `may_resolve_first` - the never-resolve-a-denied-name rule: a name is looked up before
  it is decided only when the lookup cannot leak (its addresses are already known) or the
  policy needs addresses to decide it; otherwise it is decided by name first, and a name
  the policy refuses whatever it resolves to is never looked up (a workload could
  otherwise leak data in the query itself: `CONNECT <secret>.evil.example`).
* `first_bytes` - a tunnel's first client bytes: the TLS SNI must name the CONNECT host
  (else domain fronting), an IP-literal CONNECT has its SNI name decided as the host,
  bytes on port 443 that are not TLS are refused unless allowed, a malformed ClientHello
  is refused.

A `Invalid` is a protocol error (answered 400, never subject to report-only); a
`GuardRefusal` is a policy refusal minted outside the engine, which the caller passes to
`Checkpoint.guard_deny` (so report-only applies to it as to every decision).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import httptools

from egressguard.engine import InvalidHost, Kind, Request
from egressguard.engine import normalize_host as normalize_host
from egressguard.engine._frozen import fast_init
from egressguard.engine.normalize import Host, IPAddress
from egressguard.gateway import http1, tls


@dataclass(frozen=True, slots=True)
class Invalid:
    """A request the gateway cannot forward as written: 400 with `reason`."""

    reason: str


@fast_init  # built per request on the keep-alive path
@dataclass(frozen=True, slots=True)
class HttpTarget:
    """Where an HTTP request goes: the normalised host, the port, the origin-form target
    to send upstream, its path (for the audit log) and the Host line to add (or b"")."""

    host: Host
    port: int
    target: bytes
    path: bytes
    host_line: bytes


@dataclass(frozen=True, slots=True)
class ConnectTarget:
    """A CONNECT authority as written, and its normalised host (None: not a host name,
    which the engine decides, and refuses, as written)."""

    raw_host: str
    port: int
    host: Host | None


@dataclass(frozen=True, slots=True)
class GuardRefusal:
    """A refusal no rule makes (domain fronting, non-TLS on 443, bad TLS)."""

    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class DecideSni:
    """An IP-literal CONNECT whose SNI names a host: decide that name (with the address
    already connected to) before relaying."""

    name: str


class Relay:
    """Nothing to refuse: relay the bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RELAY"


RELAY = Relay()
FirstBytes = tls.NeedMore | Relay | GuardRefusal | DecideSni


def http_target(url: bytes, hosts: Sequence[bytes], version: str,
                conflict: bool = False) -> HttpTarget | Invalid:
    """Check an HTTP request line and its Host headers (semantics §5). Pure, so a passed
    request line and Host are remembered as they were sent (`_TARGETS`): a workload
    calling many names on its kept-alive connections has each name's request line
    checked once, not once per request (the memo is bounded, cleared when full)."""
    if conflict:
        return Invalid("both Content-Length and Transfer-Encoding")
    memo = (url, tuple(hosts), version)
    found = _TARGETS.get(memo)
    if found is not None:
        return found
    checked = _http_target(url, memo[1], version)
    if type(checked) is HttpTarget and len(url) + sum(map(len, hosts)) <= _CACHED_REQUEST:
        if len(_TARGETS) >= _TARGETS_SIZE:
            _TARGETS.clear()
        _TARGETS[memo] = checked
    return checked


_TARGETS: dict[tuple[bytes, tuple[bytes, ...], str], HttpTarget] = {}
_TARGETS_SIZE = 4096
_CACHED_REQUEST = 1024   # longer request lines and Hosts are checked, never remembered


def _http_target(url: bytes, hosts: tuple[bytes, ...], version: str) -> HttpTarget | Invalid:
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError as exc:
        return Invalid(str(exc) or "invalid request target")
    key = (parsed.schema, parsed.host, parsed.port, hosts, version)
    checked = (_authority(*key) if len(parsed.host or b"") <= _CACHED_HOST
               and sum(map(len, hosts)) <= _CACHED_HOST else _authority.__wrapped__(*key))
    if isinstance(checked, Invalid):
        return checked
    host, host_line = checked
    path = parsed.path or b"/"
    target = path + (b"?" + parsed.query if parsed.query else b"")
    return HttpTarget(host, parsed.port or 80, target, path, host_line)


_CACHED_HOST = 300  # longer authorities are no host names: checked, never cached


@functools.lru_cache(maxsize=4096)
def _authority(schema: bytes | None, raw: bytes | None, port: int | None,
               hosts: tuple[bytes, ...], version: str) -> tuple[Host, bytes] | Invalid:
    """The URI authority checked against the Host headers: (the normalised host, the
    Host line to add), or why not. Pure, so memoised per distinct authority and Host
    (the keep-alive path of a workload calling many names pays it once per name)."""
    try:
        if not schema:
            return Invalid("origin-form request: configure this gateway as an HTTP proxy "
                           "(absolute-form targets only)")
        if schema.lower() != b"http":
            return Invalid(f"{schema.decode('latin-1')}:// targets must use CONNECT")
        raw_host = raw.decode("latin-1") if raw else ""
        host = normalize_host(raw_host)  # cached; the same key the engine computes
        host_line = http1.host_to_add(list(hosts), version, host.name, port)
        if not host_line:
            http1.check_host(list(hosts), schema, raw_host, port)
    except (http1.BadRequest, InvalidHost, UnicodeError) as exc:
        return Invalid(str(exc) or "invalid request target")
    return host, host_line


def connect_target(authority: bytes) -> ConnectTarget | Invalid:
    """Check a CONNECT request's authority (`host:port`, `[v6]:port`)."""
    try:
        raw_host, port = http1.split_authority(authority.decode("latin-1"))
    except (http1.BadRequest, UnicodeError) as exc:
        return Invalid(str(exc))
    if port is None:
        return Invalid("CONNECT target needs host:port")
    try:
        host: Host | None = normalize_host(raw_host)
    except InvalidHost:
        host = None
    return ConnectTarget(raw_host, port, host)


def may_resolve_first(known: bool, decides_by_address: bool) -> bool:
    """May the gateway look this name up before deciding it? Only when the lookup cannot
    leak anything (`known`: its addresses are already at hand, static or cached) or the
    policy decides some names by their addresses (`decides_by_address`: a network rule
    that opts names in). Otherwise decide `name_request` first and resolve only if it
    is let through."""
    return known or decides_by_address


def name_request(kind: Kind, name: str, port: int, scheme: str | None,
                 source: IPAddress | None, identity: str | None = None) -> Request:
    """The request decided on a name alone (no addresses), before any lookup."""
    return Request(kind=kind, host=name, port=port, scheme=scheme, source=source,
                   identity=identity)


def first_bytes(hello: tls.Result, port: int, connect_host: str, connect_is_ip: bool,
                non_tls_443: Literal["deny", "allow"] = "deny") -> FirstBytes:
    """What to do with a tunnel's first client bytes, as `tls.parse_client_hello` read
    them: wait for more, relay, refuse, or decide the SNI name (IP-literal CONNECT)."""
    if isinstance(hello, tls.NeedMore):
        return hello
    if isinstance(hello, tls.NotTLS):
        if port == 443 and non_tls_443 == "deny":
            return GuardRefusal("guard:non-tls-443",
                                "first bytes on port 443 are not a TLS ClientHello")
        return RELAY
    if isinstance(hello, tls.Malformed):
        return GuardRefusal("guard:malformed-tls", f"bad TLS: {hello.reason}")
    if hello.sni is None:
        return RELAY
    return check_sni(hello.sni, connect_host, connect_is_ip)


def check_sni(sni: str, connect_host: str, connect_is_ip: bool) -> Relay | GuardRefusal | DecideSni:
    """The SNI must name the CONNECT host (`connect_host`, normalised); an IP-literal
    CONNECT may carry any host name, which is then decided on its own."""
    try:
        sni_host = normalize_host(sni)
    except InvalidHost as exc:
        return GuardRefusal("guard:invalid-sni", f"TLS SNI {sni!r}: {exc}")
    if connect_is_ip and sni_host.ip is None:
        return DecideSni(sni_host.name)
    if sni_host.name != connect_host:
        return GuardRefusal(
            "guard:domain-fronting",
            f"domain fronting: TLS SNI {sni_host.name} does not match CONNECT host "
            f"{connect_host}")
    return RELAY
