"""The ClientHello reader: real hellos from OpenSSL, split records, and fuzzing."""

from __future__ import annotations

import contextlib
import ssl

from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.gateway import tls


def client_hello(sni: str | None, alpn: list[str] | None = None) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


HELLO = client_hello("up.test", ["h2", "http/1.1"])


def test_reads_sni_and_alpn_from_an_openssl_hello():
    assert tls.parse_client_hello(HELLO) == tls.ClientHello("up.test", ("h2", "http/1.1"))


def test_hello_without_sni():
    result = tls.parse_client_hello(client_hello(None))
    assert isinstance(result, tls.ClientHello) and result.sni is None


def test_every_prefix_needs_more():
    for cut in range(len(HELLO)):
        assert tls.parse_client_hello(HELLO[:cut]) is tls.NEED_MORE


def test_hello_split_across_records():
    body = HELLO[5:]
    split = b"".join(HELLO[:3] + len(part).to_bytes(2, "big") + part
                     for part in (body[:40], body[40:41], body[41:]))
    assert tls.parse_client_hello(split) == tls.parse_client_hello(HELLO)


def test_plaintext_is_not_tls():
    assert tls.parse_client_hello(b"GET / HTTP/1.1\r\n") is tls.NOT_TLS
    assert tls.parse_client_hello(b"SSH-2.0-x") is tls.NOT_TLS


def test_two_sni_extensions_are_malformed():
    crafted = _craft([(0, _sni_ext("a.test")), (0, _sni_ext("b.test"))])
    assert isinstance(tls.parse_client_hello(crafted), tls.Malformed)


def test_sni_with_control_characters_is_malformed():
    crafted = _craft([(0, _sni_ext("a.test\x00.evil"))])
    assert isinstance(tls.parse_client_hello(crafted), tls.Malformed)


def _sni_ext(name: str) -> bytes:
    raw = name.encode("latin-1")
    entry = b"\x00" + len(raw).to_bytes(2, "big") + raw
    return len(entry).to_bytes(2, "big") + entry


def _craft(extensions: list[tuple[int, bytes]]) -> bytes:
    exts = b"".join(k.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v
                    for k, v in extensions)
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + len(exts).to_bytes(2, "big") + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    result = tls.parse_client_hello(data)
    assert result is tls.NEED_MORE or result is tls.NOT_TLS or isinstance(
        result, tls.ClientHello | tls.Malformed)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(HELLO) - 1), st.integers(0, 255))
def test_mutated_hello_never_raises(pos, value):
    mutated = HELLO[:pos] + bytes([value]) + HELLO[pos + 1:]
    result = tls.parse_client_hello(mutated)
    if isinstance(result, tls.ClientHello) and result.sni is not None:
        assert result.sni.isascii()


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,3}", fullmatch=True))
def test_sni_round_trips(name):
    assert tls.parse_client_hello(_craft([(0, _sni_ext(name))])) == tls.ClientHello(name)
