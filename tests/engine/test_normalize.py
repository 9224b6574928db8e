"""Spec section 2: one normalisation before any match, and the attacks it defeats."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.engine import InvalidHost, Layer, Verdict, normalize_host, parse_url
from tests.engine.helpers import connect, snapshot, url

V4 = ipaddress.IPv4Address


@pytest.mark.parametrize(("raw", "name"), [
    ("EXAMPLE.com", "example.com"),
    ("Example.COM.", "example.com"),
    ("bücher.de", "xn--bcher-kva.de"),
    ("BÜCHER.DE", "xn--bcher-kva.de"),
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("faß.de", "xn--fa-hia.de"),            # UTS-46 nontransitional: ß kept
    ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "example.com"),  # full-width
    ("ex%41mple.com", "example.com"),       # percent-encoded host decoded once
    ("a_b.example.com", "a_b.example.com"),
])
def test_names_reach_one_canonical_spelling(raw: str, name: str) -> None:
    host = normalize_host(raw)
    assert (host.name, host.ip) == (name, None)


def test_only_one_trailing_dot_is_removed() -> None:
    assert normalize_host("example.com.").name == "example.com"
    with pytest.raises(InvalidHost):
        normalize_host("example.com..")


@pytest.mark.parametrize("raw", [
    "xn--zz.com",            # not punycode at all
    "xn--a.com",             # decodes to a control character
    "a.xn--",                # empty punycode
    "exa\u200dmple.com",     # a joiner where the context rules forbid it
    "a..b.com", ".a.com", "", " a.com", "a b.com",
    "ex%2541mple.com",       # decoded once only: the result holds a '%'
    "user@host.com", "host.com/path", "host.com#frag", "host.com?q",
    "1.2.3.4.5", "256.1.1.1", "foo.123", "foo.0x1",  # numeric last label: not a name
])
def test_invalid_names_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidHost, match="invalid host"):
        normalize_host(raw)


def test_label_and_name_length_limits() -> None:
    assert normalize_host("a" * 63 + ".com").name == "a" * 63 + ".com"
    with pytest.raises(InvalidHost, match="63"):
        normalize_host("a" * 64 + ".com")
    name_253 = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name_253) == 253
    assert normalize_host(name_253).name == name_253
    with pytest.raises(InvalidHost, match="253"):
        normalize_host(name_253 + "b")


@pytest.mark.parametrize(("raw", "address"), [
    ("2130706433", "127.0.0.1"),        # decimal
    ("0177.0.0.1", "127.0.0.1"),        # octal
    ("10.0.0.010", "10.0.0.8"),         # a leading zero makes one octet octal
    ("8.8.8.8", "8.8.8.8"),
    ("0x7f.0.0.1", "127.0.0.1"),        # hex octet
    ("0x7f000001", "127.0.0.1"),        # hex whole
    ("127.1", "127.0.0.1"),             # short form a.b
    ("10.1.1", "10.1.0.1"),             # short form a.b.c
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("::ffff:169.254.169.254", "169.254.169.254"),  # IPv4-mapped
    ("[::ffff:a9fe:a9fe]", "169.254.169.254"),      # mapped, hex, bracketed
    ("::169.254.169.254", "169.254.169.254"),       # IPv4-compatible
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),      # NAT64
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[2001:DB8::1]", "2001:db8::1"),
])
def test_ip_literals_in_every_encoding_become_the_address_they_reach(
        raw: str, address: str) -> None:
    host = normalize_host(raw)
    assert host.ip == ipaddress.ip_address(address)
    assert host.name == address


@pytest.mark.parametrize("raw", ["fe80::1%eth0", "[fe80::1%25eth0]", "[fe80::1%eth0]"])
def test_ipv6_zone_ids_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidHost, match="zone"):
        normalize_host(raw)


def test_userinfo_query_and_fragment_never_take_part_in_matching() -> None:
    parsed = parse_url("https://user:pw@Example.COM.:443/a/./b/../c?x=1#frag")
    assert (parsed.scheme, parsed.host.name, parsed.port, parsed.path) == (
        "https", "example.com", 443, "/a/c")
    assert parsed.match_string == "https://example.com/a/c"


@pytest.mark.parametrize(("raw", "host"), [
    ("http://good.com@evil.com/", "evil.com"),     # userinfo is not the host
    ("http://evil.com#@good.com/", "evil.com"),    # nor is a fragment
    ("http://evil.com?@good.com/", "evil.com"),
    ("http://evil.com\\@good.com/", "evil.com"),   # WHATWG: backslash is a slash
    ("http://%65vil.com/", "evil.com"),
    ("http://0x7f.1/", "127.0.0.1"),
])
def test_urls_parse_to_the_host_a_client_would_really_contact(raw: str, host: str) -> None:
    assert parse_url(raw).host.name == host


def test_opaque_scheme_hosts_are_normalised_like_web_hosts() -> None:
    # ada leaves non-special schemes' hosts untouched; the engine must not.
    assert parse_url("sql://SRV.Database.Windows.NET").match_string == (
        "sql://srv.database.windows.net/")
    assert parse_url("sql://0x7f.1:1433").host.ip == V4("127.0.0.1")
    assert parse_url("mysql://u@bücher.de").host.name == "xn--bcher-kva.de"
    assert parse_url("sql://%41.com/x").host.name == "a.com"


def test_default_ports_per_scheme_and_explicit_ports() -> None:
    assert parse_url("https://a.com").port == 443
    assert parse_url("http://a.com").port == 80
    assert parse_url("https://a.com:443").explicit_port is False  # the default: dropped
    assert parse_url("https://a.com:8443/x").match_string == "https://a.com:8443/x"
    assert parse_url("a.com/x").match_string == "https://a.com/x"  # no scheme: https
    assert parse_url("http://[::1]:8080/").match_string == "http://[::1]:8080/"


def test_decimal_encoded_metadata_address_is_denied() -> None:
    decision = url(snapshot(), "http://2852039166/latest/meta-data/")
    assert (decision.verdict, decision.layer, decision.rule) == (
        Verdict.DENY, Layer.GUARD, "guard:link-local")
    assert "169.254.169.254" in decision.reason


@pytest.mark.parametrize("raw", ["xn--zz.com", "exa\u200dmple.com", "a" * 64 + ".com"])
def test_invalid_host_is_denied_by_the_guard_with_reason_invalid_host(raw: str) -> None:
    decision = connect(snapshot(), raw)
    assert (decision.verdict, decision.layer, decision.rule) == (
        Verdict.DENY, Layer.GUARD, "guard:invalid-host")
    assert decision.reason.startswith("invalid host")


def test_invalid_url_is_a_denial_not_an_exception() -> None:
    for raw in ("http://", "https://[fe80::1%25eth0]/", "http://a b/", "http://ex%2541mple.com/"):
        decision = url(snapshot(), raw)
        assert (decision.verdict, decision.layer) == (Verdict.DENY, Layer.GUARD), raw


LABEL = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
UNICODE_LABEL = st.text(st.characters(min_codepoint=0x61, max_codepoint=0x2FFF,
                                      blacklist_categories=("Cs", "Zs", "Cc")),
                        min_size=1, max_size=8)
HOSTS = st.one_of(
    st.lists(LABEL, min_size=1, max_size=5).map(".".join),
    st.lists(UNICODE_LABEL, min_size=1, max_size=4).map(".".join),
    st.integers(0, 2**32 - 1).map(str),
    st.integers(0, 2**32 - 1).map(hex),
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.tuples(st.lists(LABEL, min_size=1, max_size=3).map(".".join), st.just(".")).map(
        "".join),
)


@settings(max_examples=400, deadline=None)
@given(HOSTS)
def test_normalisation_is_idempotent(raw: str) -> None:
    try:
        once = normalize_host(raw)
    except InvalidHost:
        return
    twice = normalize_host(once.name)
    assert twice == once


@settings(max_examples=200, deadline=None)
@given(HOSTS)
def test_host_and_url_normalisation_agree(raw: str) -> None:
    try:
        host = normalize_host(raw)
    except InvalidHost:
        return
    shown = f"[{host.name}]" if host.ip is not None and host.ip.version == 6 else host.name
    assert parse_url(f"https://{shown}/").host == host
