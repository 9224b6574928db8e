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

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_NAME = 253
_MAX_LABEL = 63
# A host that is already canonical: lower-case LDH labels, last label not all digits
# (an all-digit last label makes WHATWG parse it as an IPv4 number) and no punycode.
_CANONICAL = re.compile(r"(?!(?:.*\.)?xn--)[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
# WHATWG reads a name whose last label is a number (decimal or 0x-hex) as an IPv4 address.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}


class InvalidHost(ValueError):
    """Raised for a host that cannot be normalised; the message is the deny reason."""


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
    return name


def _host_from_ada(hostname: str) -> Host:
    if hostname.startswith("["):
        literal = hostname[1:-1]
        if "%" in literal:
            raise InvalidHost("invalid host: IPv6 zone identifiers are not allowed")
        ip = canonical_ip(ipaddress.IPv6Address(literal))
        return Host(ip.compressed, ip)
    try:
        ip4 = ipaddress.IPv4Address(hostname)
    except ValueError:
        return Host(_check_name(hostname))
    return Host(ip4.compressed, ip4)


@lru_cache(maxsize=65536)
def normalize_host(raw: str) -> Host:
    """Normalise a bare host (as in CONNECT, SNI, Host or a DNS question).

    Accepts bracketed or bare IPv6, any IPv4 encoding and Unicode names. Raises
    `InvalidHost` with a reason fit for a denial.
    """
    if _CANONICAL.fullmatch(raw) and not _NUMERIC_LABEL.fullmatch(
        raw.rstrip(".").rpartition(".")[2]
    ):
        return Host(_check_name(raw))
    if not raw or raw.strip() != raw:
        raise InvalidHost("invalid host: empty or padded with spaces")
    if ":" in raw and not raw.startswith("["):
        raw = f"[{raw}]"
    if raw.startswith("[") and "%" in raw:
        raise InvalidHost("invalid host: IPv6 zone identifiers are not allowed")
    if any(c in raw for c in "/?#@\\"):
        raise InvalidHost(f"invalid host: {raw!r} contains URL delimiters")
    try:
        url = ada_url.URL(f"http://{raw}/")
    except ValueError:
        raise InvalidHost(f"invalid host: {raw!r}") from None
    return _host_from_ada(url.hostname)


def parse_url(raw: str, default_scheme: str = "https") -> URL:
    """Parse and normalise a URL; userinfo, query and fragment are dropped.

    A string without a scheme is read as `default_scheme://raw`.
    """
    text = raw.strip()
    if "://" not in text:
        text = f"{default_scheme}://{text}"
    try:
        url = ada_url.URL(text)
    except ValueError:
        raise InvalidHost(f"invalid URL: {raw!r}") from None
    scheme = url.protocol[:-1]
    if not url.hostname:
        raise InvalidHost(f"invalid URL: {raw!r} has no host")
    if "%" in url.hostname:
        raise InvalidHost("invalid host: IPv6 zone identifiers are not allowed")
    host = _host_from_ada(url.hostname)
    explicit = bool(url.port)
    port = int(url.port) if explicit else _DEFAULT_PORTS.get(scheme, 0)
    path = url.pathname if url.pathname not in ("", "/") else "/"
    return URL(scheme=scheme, host=host, port=port, path=path, explicit_port=explicit)
