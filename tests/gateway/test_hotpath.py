"""What the keep-alive path remembers between requests never changes a verdict: the
Host check is memoised per (authority, Host, version) and still refuses a Host that does
not name the target; a name whose addresses changed is decided afresh, not from the
engine's memo; the audit record's address is the one decided."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from egressguard.gateway import decide
from egressguard.gateway.connection import first_address_text
from tests.gateway.conftest import raw

pytestmark = pytest.mark.timeout(30)


def test_a_host_header_naming_another_target_is_refused_after_the_matching_one_passed() -> None:
    url = b"http://shop.example:8080/a"
    assert isinstance(decide.http_target(url, [b"shop.example:8080"], "1.1"),
                      decide.HttpTarget)
    for hosts in ([b"evil.example:8080"], [b"shop.example:8081"], [b"shop.example"],
                  [b"shop.example:8080", b"shop.example:8080"], []):
        assert isinstance(decide.http_target(url, hosts, "1.1"), decide.Invalid), hosts
    # HTTP/1.0 may leave Host out (the authority is added upstream); 1.1 may not.
    ten = decide.http_target(url, [], "1.0")
    assert isinstance(ten, decide.HttpTarget) and ten.host_line == b"Host: shop.example:8080\r\n"
    assert isinstance(decide.http_target(url, [], "1.1"), decide.Invalid)
    assert isinstance(decide.http_target(b"https://shop.example:8080/a",
                                         [b"shop.example:8080"], "1.1"), decide.Invalid)


def test_an_authority_too_long_to_memoise_is_still_checked() -> None:
    long = b"a" * 63 + b"." + b"b" * 63 + b"." + b"c" * 63 + b"." + b"d" * 60 + b".example"
    assert isinstance(decide.http_target(b"http://%s/" % long, [long], "1.1"), decide.Invalid)
    huge = b"x" * 400
    for _ in range(2):
        checked = decide.http_target(b"http://%s/" % huge, [huge + b"y"], "1.1")
        assert isinstance(checked, decide.Invalid)


def test_every_path_of_a_memoised_authority_keeps_its_own_target() -> None:
    first = decide.http_target(b"http://shop.example/a?x=1", [b"shop.example"], "1.1")
    second = decide.http_target(b"http://shop.example/b", [b"shop.example"], "1.1")
    assert isinstance(first, decide.HttpTarget) and isinstance(second, decide.HttpTarget)
    assert (first.target, first.path) == (b"/a?x=1", b"/a")
    assert (second.target, second.path) == (b"/b", b"/b")
    assert first.host is second.host


def test_a_remembered_request_line_with_another_host_or_version_is_checked_afresh() -> None:
    url = b"http://shop.example:8080/remembered"
    passed = decide.http_target(url, [b"shop.example:8080"], "1.1")
    assert isinstance(passed, decide.HttpTarget)
    assert decide.http_target(url, [b"shop.example:8080"], "1.1") is passed  # remembered
    for hosts, version in (([b"evil.example:8080"], "1.1"), ([], "1.1"),
                           ([b"shop.example:8080"] * 2, "1.1"), ([b"SHOP.example:8081"], "1.0")):
        assert isinstance(decide.http_target(url, hosts, version), decide.Invalid), hosts
    assert isinstance(decide.http_target(url, [b"shop.example:8080"], "1.1", conflict=True),
                      decide.Invalid)
    ten = decide.http_target(url, [], "1.0")
    assert isinstance(ten, decide.HttpTarget) and ten.host_line == b"Host: shop.example:8080\r\n"
    assert passed.host_line == b""


def test_a_refused_request_line_stays_refused_however_often_it_comes() -> None:
    url = b"http://shop.example/x"
    for _ in range(3):
        assert isinstance(decide.http_target(url, [b"other.example"], "1.1"), decide.Invalid)
    for i in range(decide._TARGETS_SIZE + 10):   # the memo fills and is cleared
        name = b"n%d.example" % i
        assert isinstance(decide.http_target(b"http://%s/" % name, [name], "1.1"),
                          decide.HttpTarget)
    assert isinstance(decide.http_target(url, [b"other.example"], "1.1"), decide.Invalid)
    assert len(decide._TARGETS) <= decide._TARGETS_SIZE


def test_the_audited_address_is_the_first_of_each_tuple() -> None:
    v4 = (ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.1"))
    v6 = (ipaddress.ip_address("2001:db8::1"),)
    for _ in range(2):
        assert first_address_text(v4) == "93.184.216.34"
        assert first_address_text(v6) == "2001:db8::1"
        assert first_address_text(()) == ""
    assert first_address_text((ipaddress.ip_address("93.184.216.35"),)) == "93.184.216.35"


def test_a_name_re_resolved_to_an_unnamed_address_is_refused_on_the_same_connection(
        gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    with httpx.Client(proxy=gw.url) as client:
        assert client.get(f"http://up.test:{upstream.port}/one").status_code == 200
        # The name now resolves elsewhere (a new answer, as after its TTL): only
        # 127.0.0.1 is named by a network rule, so the guard refuses 127.0.0.2.
        resolver = gw.gateway.resolver
        resolver.static["up.test"] = (ipaddress.ip_address("127.0.0.2"),)
        refused = client.get(f"http://up.test:{upstream.port}/two")
        assert refused.status_code == 403
        assert refused.headers["X-Egressguard-Rule"] == "guard:loopback"
        resolver.static["up.test"] = (ipaddress.ip_address("127.0.0.1"),)
        assert client.get(f"http://up.test:{upstream.port}/three").status_code == 200
    events = [e for e in gw.sink.events if e.phase in ("decision", "exchange")]
    assert [e.resolved_address for e in events if e.verdict == "deny"] == ["127.0.0.2"]


def test_a_mismatched_host_on_a_keep_alive_connection_is_refused_after_good_requests(
        gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    good = (f"GET http://up.test:{upstream.port}/ HTTP/1.1\r\n"
            f"Host: up.test:{upstream.port}\r\n\r\n").encode()
    bad = (f"GET http://up.test:{upstream.port}/ HTTP/1.1\r\n"
           f"Host: other.test:{upstream.port}\r\nConnection: close\r\n\r\n").encode()
    out = raw(gw.port, good + good + bad)
    assert out.count(b"HTTP/1.1 200") == 2
    assert b"HTTP/1.1 400" in out and b"does not match" in out
