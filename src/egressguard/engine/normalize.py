"""Host and URL normalisation: the one place where names become comparable.

Every enforcement point (proxy, DNS filter, library check, CLI) passes what it was given
through this module before any rule sees it, so that `EXAMPLE.com.`, `example.com`,
`xn--...` spellings and the many encodings of an IP literal all reach the same key.

URLs are parsed by `ada-url`, a WHATWG URL Standard parser: it applies UTS-46 IDNA,
lower-cases, decodes percent-encoded hosts and canonicalises every IPv4 spelling a browser
or `curl` accepts (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`). We then strip one trailing
dot, enforce DNS length limits and unwrap IPv4 addresses embedded in IPv6 literals.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

import ada_url
from ada_url.ada_adapter import ffi as _ffi
from ada_url.ada_adapter import lib as _lib

from egressguard.engine._frozen import fast_init
from egressguard.errors import InputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_NAME = 253
_MAX_LABEL = 63
# A host that is already canonical: lower-case LDH labels of 1-63 octets, an optional
# trailing dot, and a last label that WHATWG would not read as an IPv4 number (all digits
# or 0x-hex). Such a host skips the URL parser; `xn--` labels still go through it.
_CANONICAL = re.compile(
    r"(?:[a-z0-9_-]{1,63}\.)*(?![0-9]+\.?$)(?!0x)[a-z0-9_-]{1,63}\.?")
# Plain dotted-decimal IPv4 without leading zeros (a leading zero is octal to WHATWG):
# the common literal, read directly rather than through the URL parser.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_OMITTED = 0xFFFFFFFF  # ada's "component absent" offset
_ada_parse, _ada_is_valid, _ada_free = _lib.ada_parse, _lib.ada_is_valid, _lib.ada_free
_ada_get_href, _ada_get_components = _lib.ada_get_href, _lib.ada_get_components
_ffi_string = _ffi.string
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21,
                  "sql": 1433, "mssql": 1433, "mysql": 3306, "postgresql": 5432,
                  "postgres": 5432}
# WHATWG "special" schemes: ada normalises their hosts itself. Any other scheme's host is
# an opaque string (not lower-cased, IDNA-mapped or IPv4-decoded), so we normalise it.
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp", "file"})


class InvalidHost(InputError, ValueError):
    """Raised for a host that cannot be normalised; the message is the deny reason."""


@fast_init
@dataclass(frozen=True, slots=True)
class Host:
    """A normalised destination host: either a DNS name (A-labels) or an IP address."""

    name: str
    ip: IPAddress | None = None

    @property
    def is_ip(self) -> bool:
        return self.ip is not None

    def __str__(self) -> str:
        return self.name


@fast_init
@dataclass(frozen=True, slots=True)
class URL:
    """A parsed, normalised URL; only scheme, host, port and path take part in matching."""

    scheme: str
    host: Host
    port: int
    path: str
    explicit_port: bool

    @property
    def match_string(self) -> str:
        """`scheme://host[:port][/path]`, the text callout regexes are searched in."""
        host = f"[{self.host.name}]" if self.host.ip is not None and self.host.ip.version == 6 \
            else self.host.name
        port = f":{self.port}" if self.explicit_port else ""
        return f"{self.scheme}://{host}{port}{self.path}"


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 literal really reaches (mapped, compatible or NAT64)."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    packed = ip.packed
    if ip in _NAT64:
        return ipaddress.IPv4Address(packed[12:])
    # IPv4-compatible (deprecated ::a.b.c.d), excluding :: and ::1.
    if packed[:12] == bytes(12) and int(ip) > 1:
        return ipaddress.IPv4Address(packed[12:])
    return None


def canonical_ip(ip: IPAddress) -> IPAddress:
    """Map IPv6 forms that carry an IPv4 address to that IPv4 address."""
    return embedded_ipv4(ip) or ip


def _check_name(name: str) -> str:
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidHost("invalid host: empty name")
    if len(name) > _MAX_NAME:
        raise InvalidHost(f"invalid host: name longer than {_MAX_NAME} octets")
    for label in name.split("."):
        if not label:
            raise InvalidHost(f"invalid host: empty label in {name!r}")
        if len(label) > _MAX_LABEL:
            raise InvalidHost(f"invalid host: label longer than {_MAX_LABEL} octets")
        if label.startswith("xn--"):
            _check_a_label(label)
    return name


def _check_a_label(label: str) -> None:
    """Reject an `xn--` label that is not the UTS-46 A-label of what it decodes to.

    ada-url passes such labels through unchecked; a bogus one (`xn--zz`) could never be
    registered, and two spellings of one name must not reach different keys.
    """
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        raise InvalidHost(f"invalid host: {label!r} is not valid punycode") from None
    if not decoded or ada_url.idna_to_ascii(decoded) != label.encode("ascii"):
        raise InvalidHost(f"invalid host: {label!r} is not a valid IDNA A-label")


@lru_cache(maxsize=65536)
def _name_host(name: str) -> Host:
    """A `Host` for a name ada produced (already mapped); the cache keeps URL decisions
    from re-checking the labels of hosts seen before."""
    return Host(_check_name(name))


def _host_from_ada(hostname: str) -> Host:
    if hostname.startswith("["):
        literal = hostname[1:-1]
        if "%" in literal:
            raise InvalidHost("invalid host: IPv6 zone identifiers are not allowed")
        ip = canonical_ip(ipaddress.IPv6Address(literal))
        return Host(ip.compressed, ip)
    # ada writes every IPv4 spelling as dotted decimal; anything else is a domain name.
    if hostname.count(".") == 3 and hostname.replace(".", "").isdigit():
        ip4 = ipaddress.IPv4Address(hostname)
        return Host(ip4.compressed, ip4)
    return _name_host(hostname)


def _ada(text: str) -> tuple[str, str, int | None, str] | None:
    """WHATWG-parse `text` with ada: (scheme, hostname, explicit port, pathname) or None.

    Calls ada's C API directly (one parse, one href copy, the component offsets): the
    `ada_url.URL` wrapper costs ~10 µs per URL in attribute getters, this ~2 µs.
    """
    data = text.encode("utf-8", "surrogatepass")
    handle = _ada_parse(data, len(data))
    try:
        if not _ada_is_valid(handle):
            return None
        raw_href = _ada_get_href(handle)
        href = _ffi_string(raw_href.data, raw_href.length).decode("utf-8")
        comp = _ada_get_components(handle)
        scheme = href[:comp.protocol_end - 1]
        start = comp.host_start
        if start < len(href) and href[start] == "@":
            start += 1
        hostname = href[start:comp.host_end]
        port = None if comp.port == _OMITTED else comp.port
        end = comp.search_start if comp.search_start != _OMITTED else comp.hash_start
        path = href[comp.pathname_start:None if end == _OMITTED else end]
        return scheme, hostname, port, path
    finally:
        _ada_free(handle)


@lru_cache(maxsize=65536)
def normalize_host(raw: str) -> Host:
    """Normalise a bare host (as in CONNECT, SNI, Host or a DNS question).

    Accepts bracketed or bare IPv6, any IPv4 encoding and Unicode names. Raises
    `InvalidHost` with a reason fit for a denial.
    """
    if len(raw) <= _MAX_NAME and _CANONICAL.fullmatch(raw) and "xn--" not in raw:
        return Host(raw[:-1] if raw[-1] == "." else raw)
    if _DOTTED_QUAD.fullmatch(raw):
        return Host(raw, ipaddress.IPv4Address(raw))
    if not raw or raw.strip() != raw:
        raise InvalidHost("invalid host: empty or padded with spaces")
    if ":" in raw and not raw.startswith("["):
        raw = f"[{raw}]"
    if raw.startswith("[") and "%" in raw:
        raise InvalidHost("invalid host: IPv6 zone identifiers are not allowed")
    if any(c in raw for c in "/?#@\\"):
        raise InvalidHost(f"invalid host: {raw!r} contains URL delimiters")
    parsed = _ada(f"http://{raw}/")
    if parsed is None:
        raise InvalidHost(f"invalid host: {raw!r}")
    return _host_from_ada(parsed[1])


def parse_url(raw: str, default_scheme: str = "https") -> URL:
    """Parse and normalise a URL; userinfo, query and fragment are dropped.

    A string without a scheme is read as `default_scheme://raw`.
    """
    text = raw.strip()
    if "://" not in text:
        text = f"{default_scheme}://{text}"
    parsed = _ada(text)
    if parsed is None:
        raise InvalidHost(f"invalid URL: {raw!r}")
    scheme, hostname, explicit_port, path = parsed
    if not hostname:
        raise InvalidHost(f"invalid URL: {raw!r} has no host")
    if scheme in _SPECIAL_SCHEMES:
        if "%" in hostname:
            raise InvalidHost("invalid host: IPv6 zone identifiers are not allowed")
        host = _host_from_ada(hostname)
    else:  # an opaque host, still percent-encoded: decode and normalise it like any other
        host = normalize_host(hostname)
    port = explicit_port if explicit_port is not None else _DEFAULT_PORTS.get(scheme, 0)
    return URL(scheme, host, port, path or "/", explicit_port is not None)
