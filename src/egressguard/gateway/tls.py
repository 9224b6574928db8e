"""Read the SNI out of a TLS ClientHello, without TLS (pure, no I/O).

No mainstream library exposes a ClientHello parser, and the gateway must not terminate
TLS (ALPN and everything else pass through untouched), so this reads just enough of the
record layer (RFC 8446 section 5.1) and the handshake (section 4.1.2) to find the
`server_name` extension (RFC 6066 section 3). A ClientHello may span several records;
bytes are only ever looked at, never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010
MAX_HELLO = 64 * 1024  # a larger ClientHello is refused rather than buffered


class NeedMore:
    """Not enough bytes yet to decide; feed more."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


class NotTLS:
    """The first bytes are not a TLS handshake record."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_TLS"


NEED_MORE = NeedMore()
NOT_TLS = NotTLS()


@dataclass(frozen=True, slots=True)
class Malformed:
    """A TLS handshake record that is not a well-formed ClientHello."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str | None            # host_name as sent (ASCII), None when absent
    alpn: tuple[str, ...] = ()


Result = ClientHello | Malformed | NeedMore | NotTLS


class _Short(Exception):
    pass


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _Short
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def vec(self, length_bytes: int) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes), "big"))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _handshake_bytes(data: bytes) -> bytes | Malformed | NeedMore | NotTLS:
    """Concatenate handshake records until the first handshake message is complete."""
    if not data:
        return NEED_MORE
    if data[0] != _HANDSHAKE:
        return NOT_TLS
    if len(data) >= 2 and data[1] != 0x03:
        return NOT_TLS
    out = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            return NEED_MORE
        if data[pos] != _HANDSHAKE:
            return Malformed("ClientHello interleaved with a non-handshake record")
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if length == 0 or length > 16384 + 2048:
            return Malformed(f"bad TLS record length {length}")
        if len(data) - pos - 5 < length:
            return NEED_MORE
        out += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(out) >= 4:
            need = 4 + int.from_bytes(out[1:4], "big")
            if need > MAX_HELLO:
                return Malformed("ClientHello too large")
            if len(out) >= need:
                return bytes(out[:need])
        if pos >= MAX_HELLO:
            return Malformed("ClientHello too large")


def parse_client_hello(data: bytes) -> Result:
    """Classify the first bytes a client sent into a tunnel.

    Returns `NEED_MORE`, `NOT_TLS`, `Malformed(reason)` or `ClientHello(sni, alpn)`.
    Never raises for any input.
    """
    hs = _handshake_bytes(data)
    if not isinstance(hs, bytes):
        return hs
    try:
        return _parse_hello(_Reader(hs))
    except _Short:
        return Malformed("truncated ClientHello")


def _parse_hello(r: _Reader) -> ClientHello | Malformed:
    if r.u8() != _CLIENT_HELLO:
        return Malformed("first handshake message is not a ClientHello")
    r.u24()
    r.take(2 + 32)             # legacy_version, random
    if len(r.vec(1)) > 32:
        return Malformed("session id longer than 32 bytes")
    r.vec(2)                   # cipher_suites
    r.vec(1)                   # compression methods
    if r.left == 0:
        return ClientHello(None)
    ext = _Reader(r.vec(2))
    if r.left:
        return Malformed("trailing bytes after extensions")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    seen: set[int] = set()
    while ext.left:
        kind = ext.u16()
        body = _Reader(ext.vec(2))
        if kind in seen:
            return Malformed(f"duplicate extension {kind}")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            found = _server_name(body)
            if isinstance(found, Malformed):
                return found
            sni = found
        elif kind == _EXT_ALPN:
            alpn = _alpn(_Reader(body.vec(2)))
    return ClientHello(sni, alpn)


def _alpn(names: _Reader) -> tuple[str, ...]:
    out: list[str] = []
    while names.left:
        out.append(names.vec(1).decode("latin-1"))
    return tuple(out)


def _server_name(body: _Reader) -> str | Malformed:
    names = _Reader(body.vec(2))
    if body.left:
        return Malformed("trailing bytes in server_name")
    host: str | None = None
    while names.left:
        name_type = names.u8()
        value = names.vec(2)
        if name_type != 0:
            continue
        if host is not None:
            return Malformed("more than one host_name in server_name")
        if not value or not value.isascii() or any(c < 0x21 or c == 0x7F for c in value):
            return Malformed("server_name is not a printable ASCII host name")
        host = value.decode("ascii")
    if host is None:
        return Malformed("server_name extension without a host_name")
    return host
