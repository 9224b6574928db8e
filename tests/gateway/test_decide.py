"""The gateway's own decisions, from tables, without sockets (gateway/decide.py)."""

from __future__ import annotations

import pytest

from egressguard.engine import Kind
from egressguard.gateway import decide, tls
from egressguard.gateway.decide import RELAY, DecideSni, GuardRefusal, Invalid

# (url, Host headers, HTTP version) -> (host, port, target, Host line added) or a 400 reason
HTTP_TARGETS = [
    (b"http://a.test/x?q=1", [b"a.test"], "1.1", ("a.test", 80, b"/x?q=1", b"")),
    (b"http://A.TEST./", [b"a.test"], "1.1", ("a.test", 80, b"/", b"")),
    (b"http://a.test", [b"a.test"], "1.1", ("a.test", 80, b"/", b"")),
    (b"http://a.test:8080/", [b"a.test:8080"], "1.1", ("a.test", 8080, b"/", b"")),
    (b"http://a.test:80/", [b"a.test"], "1.1", ("a.test", 80, b"/", b"")),
    (b"http://a.test/", [b"a.test:80"], "1.1", ("a.test", 80, b"/", b"")),
    (b"http://[::1]:81/", [b"[::1]:81"], "1.1", ("::1", 81, b"/", b"")),
    (b"http://10.0.0.1/", [b"10.0.0.1"], "1.1", ("10.0.0.1", 80, b"/", b"")),
    # HTTP/1.0 without Host: decided by the authority, which becomes its Host upstream
    (b"http://a.test/", [], "1.0", ("a.test", 80, b"/", b"Host: a.test\r\n")),
    (b"http://a.test:81/", [], "1.0", ("a.test", 81, b"/", b"Host: a.test:81\r\n")),
    (b"http://[::1]/", [], "1.0", ("::1", 80, b"/", b"Host: [::1]\r\n")),
    (b"http://a.test/", [b"a.test"], "1.0", ("a.test", 80, b"/", b"")),
    # refused (400)
    (b"http://a.test/", [], "1.1", "missing Host header"),
    (b"http://a.test/", [b"a.test", b"a.test"], "1.1", "duplicate Host header"),
    (b"http://a.test/", [b"b.test"], "1.1", "does not match the request target"),
    (b"http://a.test/", [b"a.test:81"], "1.1", "does not match the request target"),
    (b"http://a.test:81/", [b"a.test"], "1.1", "does not match the request target"),
    (b"http://a.test/", [b"a.test:4\xc2\xb2"], "1.1", "bad port"),
    (b"http://a.test/", [b"a.test"], "0.9", "unsupported HTTP version"),
    (b"http://a.test/", [b"a.test"], "2.0", "unsupported HTTP version"),
    (b"/origin-form", [b"a.test"], "1.1", "origin-form request"),
    (b"https://a.test/", [b"a.test"], "1.1", "https:// targets must use CONNECT"),
    (b"ftp://a.test/", [b"a.test"], "1.1", "ftp:// targets must use CONNECT"),
    (b"http://a b.test/", [b"a b.test"], "1.1", ""),
    (b"http://bad_host!.test/", [b"bad_host!.test"], "1.1", ""),
]


@pytest.mark.parametrize(("url", "hosts", "version", "expected"), HTTP_TARGETS)
def test_http_target_table(url, hosts, version, expected):
    result = decide.http_target(url, hosts, version)
    if isinstance(expected, str):
        assert isinstance(result, Invalid), result
        assert expected in result.reason and result.reason
        return
    assert not isinstance(result, Invalid), result
    assert (result.host.name, result.port, result.target, result.host_line) == expected


def test_conflicting_framing_is_a_400_before_anything_else():
    result = decide.http_target(b"http://a.test/", [b"a.test"], "1.1", conflict=True)
    assert result == Invalid("both Content-Length and Transfer-Encoding")


CONNECT_TARGETS = [
    (b"a.test:443", ("a.test", 443, "a.test")),
    (b"A.Test.:8443", ("A.Test.", 8443, "a.test")),
    (b"[::1]:443", ("::1", 443, "::1")),
    (b"10.0.0.1:22", ("10.0.0.1", 22, "10.0.0.1")),
    (b"a/b.test:443", ("a/b.test", 443, None)),     # decided (and refused) as written
    (b"a.test", "CONNECT target needs host:port"),
    (b"a.test:0", "bad port"),
    (b"a.test:65536", "bad port"),
    (b"a.test:\xd9\xa4", "bad port"),              # a non-ASCII digit
    (b":443", "empty host"),
    (b"[::1", "bad authority"),
]


@pytest.mark.parametrize(("authority", "expected"), CONNECT_TARGETS)
def test_connect_target_table(authority, expected):
    result = decide.connect_target(authority)
    if isinstance(expected, str):
        assert isinstance(result, Invalid) and expected in result.reason, result
        return
    assert not isinstance(result, Invalid), result
    assert (result.raw_host, result.port,
            result.host.name if result.host else None) == expected


@pytest.mark.parametrize(("known", "by_address", "resolve_first"), [
    (True, False, True),      # addresses at hand: no query leaves the gateway
    (False, True, True),      # the policy needs the addresses to decide the name
    (True, True, True),
    (False, False, False),    # decide the name first; a denied name is never looked up
])
def test_a_denied_name_is_never_resolved_before_it_is_decided(known, by_address,
                                                              resolve_first):
    assert decide.may_resolve_first(known, by_address) is resolve_first


def test_the_name_first_request_carries_no_addresses():
    request = decide.name_request(Kind.CONNECT, "secret.evil.test", 443, None, None)
    assert (request.host, request.port, request.addresses) == ("secret.evil.test", 443, ())


def _hello(sni: str | None) -> tls.ClientHello:
    return tls.ClientHello(sni=sni, alpn=())


FIRST_BYTES = [
    # (parsed first bytes, CONNECT port, CONNECT host, CONNECT is an IP, non_tls_443)
    (tls.NEED_MORE, 443, "a.test", False, "deny", tls.NEED_MORE),
    (_hello("a.test"), 443, "a.test", False, "deny", RELAY),
    (_hello("A.TEST."), 443, "a.test", False, "deny", RELAY),
    (_hello(None), 443, "a.test", False, "deny", RELAY),
    (_hello("b.test"), 443, "a.test", False, "deny", "guard:domain-fronting"),
    (_hello("10.0.0.2"), 443, "10.0.0.1", True, "deny", "guard:domain-fronting"),
    (_hello("10.0.0.1"), 443, "10.0.0.1", True, "deny", RELAY),
    (_hello("a.test"), 443, "10.0.0.1", True, "deny", DecideSni("a.test")),
    (_hello("A.Test"), 443, "10.0.0.1", True, "deny", DecideSni("a.test")),
    (_hello("a/b.test"), 443, "10.0.0.1", True, "deny", "guard:invalid-sni"),
    (_hello("a/b.test"), 443, "a.test", False, "deny", "guard:invalid-sni"),
    (tls.NOT_TLS, 443, "a.test", False, "deny", "guard:non-tls-443"),
    (tls.NOT_TLS, 443, "a.test", False, "allow", RELAY),
    (tls.NOT_TLS, 22, "a.test", False, "deny", RELAY),
    (tls.Malformed("short"), 8443, "a.test", False, "deny", "guard:malformed-tls"),
]


@pytest.mark.parametrize(("hello", "port", "host", "is_ip", "mode", "expected"), FIRST_BYTES)
def test_first_bytes_table(hello, port, host, is_ip, mode, expected):
    result = decide.first_bytes(hello, port, host, is_ip, mode)
    if isinstance(expected, str):
        assert isinstance(result, GuardRefusal) and result.rule == expected, result
        assert result.reason
    else:
        assert result == expected or result is expected


def test_fronting_refusal_names_both_hosts():
    result = decide.check_sni("other.test", "up.test", False)
    assert isinstance(result, GuardRefusal)
    assert "other.test" in result.reason and "up.test" in result.reason


def test_first_bytes_from_real_client_hello_bytes():
    """The same decision from bytes a TLS client produced, parsed by tls.py."""
    import ssl

    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="other.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = tls.parse_client_hello(outgoing.read())
    assert decide.first_bytes(hello, 443, "other.test", False) is RELAY
    assert isinstance(decide.first_bytes(hello, 443, "up.test", False), GuardRefusal)
