"""HTTP/1.1 message pieces the proxy needs, as pure functions (no sockets).

Parsing of the byte stream is `httptools` (llhttp); this module holds what a forward
proxy adds on top: the hop-by-hop header rules of RFC 9110 section 7.6.1, the Host
consistency check of the policy semantics (§5), and the refusal responses.
"""

from __future__ import annotations

from collections.abc import Iterable

from egressguard.engine import Decision, InvalidHost, normalize_host
from egressguard.errors import InputError

Headers = list[tuple[bytes, bytes]]

# RFC 9110 7.6.1 plus the de-facto ones every proxy strips.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
VIA = b"Via: 1.1 egressguard\r\n"
_DEFAULT_PORT = {b"http": 80, b"https": 443}


class BadRequest(InputError, ValueError):
    """A request the proxy answers with 400 (the message is the reason)."""


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in `Connection`, which are hop-by-hop for this message."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def end_to_end(headers: Headers) -> Iterable[tuple[bytes, bytes]]:
    """The headers a proxy forwards: all but hop-by-hop and `Connection`-named ones."""
    extra = connection_tokens(headers)
    for name, value in headers:
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in extra:
            yield name, value


def split_authority(text: str) -> tuple[str, int | None]:
    """`host[:port]` or `[v6][:port]` -> (host, port or None). Raises BadRequest."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadRequest(f"bad authority {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise BadRequest(f"bad authority {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise BadRequest("empty host in authority")
    if not port_text:
        return host, None
    # isdigit() alone accepts "4²" or "٤", which int() then rejects (or reads as 4).
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise BadRequest(f"bad port in {text!r}")
    return host, int(port_text)


def check_host_header(headers: Headers, scheme: bytes, url_host: str,
                      url_port: int | None) -> None:
    """Semantics §5: exactly one Host, equal to the absolute-URI authority."""
    check_host([v for n, v in headers if n.lower() == b"host"], scheme, url_host, url_port)


def host_to_add(hosts: list[bytes], version: str, host: str, port: int | None) -> bytes:
    """The `Host` line to add when forwarding, b"" when the request has its own.

    RFC 9112 3.2 requires Host of HTTP/1.1 only: an HTTP/1.0 absolute-form request without
    it is decided by the URI authority (`host`, normalised, `port` as written) and gets
    that authority as its Host upstream (semantics §5). Raises BadRequest for HTTP/1.1
    without Host, and for versions other than 1.0 and 1.1 (HTTP/0.9 has no headers).
    """
    if version not in ("1.1", "1.0"):
        raise BadRequest(f"unsupported HTTP version {version}")
    if hosts:
        return b""
    if version != "1.0":
        raise BadRequest("missing Host header")
    authority = f"[{host}]" if ":" in host else host
    if port is not None:
        authority += f":{port}"
    return b"Host: %s\r\n" % authority.encode("ascii")


def check_host(hosts: list[bytes], scheme: bytes, url_host: str, url_port: int | None) -> None:
    """`check_host_header` given the values of the Host headers."""
    if not hosts:
        raise BadRequest("missing Host header")
    if len(hosts) > 1:
        raise BadRequest("duplicate Host header")
    default = _DEFAULT_PORT.get(scheme.lower(), 80)
    try:
        host, port = split_authority(hosts[0].decode("latin-1").strip())
        same = (normalize_host(host) == normalize_host(url_host)
                and (port or default) == (url_port or default))
    except InvalidHost as exc:
        raise BadRequest(f"Host header: {exc}") from None
    if not same:
        raise BadRequest(f"Host header {hosts[0].decode('latin-1')!r} does not match the "
                         f"request target {url_host}:{url_port or default}")


def framing_conflict(headers: Headers) -> str | None:
    """Request smuggling guards llhttp does not already enforce."""
    has_cl = has_te = False
    for name, _ in headers:
        lower = name.lower()
        has_cl = has_cl or lower == b"content-length"
        has_te = has_te or lower == b"transfer-encoding"
    if has_cl and has_te:
        return "both Content-Length and Transfer-Encoding"
    return None


def response(status: int, reason: str, body: str, *, close: bool,
             extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete small response with a text body."""
    data = body.encode("utf-8")
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(data)}", "Via: 1.1 egressguard",
             f"Connection: {'close' if close else 'keep-alive'}"]
    lines += [f"{k}: {_header_safe(v)}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + data


def refusal(decision: Decision, *, close: bool) -> bytes:
    """403 naming destination, layer, rule and reason (what an operator needs to act)."""
    body = (f"egressguard: request denied\n"
            f"destination: {decision.destination}\n"
            f"layer: {decision.layer.value}\n"
            f"rule: {decision.rule}\n"
            f"reason: {decision.reason}\n")
    return response(403, "Forbidden", body, close=close, extra=(
        ("X-Egressguard-Decision", decision.verdict.value),
        ("X-Egressguard-Rule", decision.rule)))


def error(status: int, reason: str, detail: str) -> bytes:
    """400/408/431/502/503/504 with the reason; the connection closes after it."""
    return response(status, reason, f"egressguard: {detail}\n", close=True,
                    extra=(("X-Egressguard-Error", detail),))


def _header_safe(value: str) -> str:
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in value)[:512]
