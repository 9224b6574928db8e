"""Plain HTTP through the gateway: allowed and denied requests, attacks on Host and on
message framing, IP-literal encodings, keep-alive and streaming."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import httpx
import pytest

from tests.gateway.conftest import CLOSED_POLICY, LOOPBACK_POLICY, raw

pytestmark = pytest.mark.timeout(30)


def test_allowed_request_is_forwarded_with_hop_by_hop_headers_removed(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    with httpx.Client(proxy=gw.url) as client:
        r = client.get(f"http://up.test:{upstream.port}/a/b?q=1",
                       headers={"Keep-Alive": "timeout=1", "X-Drop": "1", "Connection": "X-Drop",
                                "Proxy-Authorization": "Basic c2VjcmV0"})
    assert r.status_code == 200
    seen = json.loads(r.text)
    names = {k.lower(): v for k, v in seen["headers"]}
    assert seen["path"] == "/a/b?q=1"
    assert names["host"] == f"up.test:{upstream.port}"
    assert "via" in names and "keep-alive" not in names and "x-drop" not in names
    assert "proxy-authorization" not in names
    assert "keep-alive" not in {k.lower() for k in r.headers}  # upstream's, hop-by-hop
    event = gw.sink.wait_for(lambda e: e.phase == "close")
    assert event.verdict == "allow" and event.layer == "network"
    assert event.bytes_down > 0 and event.close_cause == ""


def test_denied_destination_gets_403_naming_layer_rule_and_reason(gateway_factory):
    gw = gateway_factory()
    r = httpx.get("http://not-allowed.test/", proxy=gw.url)
    assert r.status_code == 403
    assert r.headers["X-Egressguard-Decision"] == "deny"
    assert r.headers["X-Egressguard-Rule"] == "default"
    assert "destination: not-allowed.test:80" in r.text
    assert "layer: default" in r.text and "reason:" in r.text
    event = gw.sink.wait_for(lambda e: e.host == "not-allowed.test")
    assert (event.verdict, event.permitted, event.phase) == ("deny", False, "decision")


def test_denial_is_recorded_before_the_client_sees_the_403(gateway_factory):
    gw = gateway_factory()
    r = httpx.get("http://not-allowed.test/", proxy=gw.url)
    assert r.status_code == 403
    assert any(e.host == "not-allowed.test" for e in gw.sink.events)  # no waiting needed


def test_name_resolving_to_metadata_address_is_denied(gateway_factory):
    gw = gateway_factory(resolve={"meta.test": "169.254.169.254"})
    out = subprocess.run(["curl", "-s", "-i", "-x", gw.url, "http://meta.test/latest/meta-data/"],
                         capture_output=True, timeout=10, text=True).stdout
    assert out.startswith("HTTP/1.1 403")
    assert "X-Egressguard-Rule: guard:link-local" in out


def test_name_resolving_to_loopback_is_denied_without_a_network_rule_naming_it(
        gateway_factory, upstream):
    gw = gateway_factory(CLOSED_POLICY, resolve={"up.test": "127.0.0.1"})
    r = httpx.get(f"http://up.test:{upstream.port}/", proxy=gw.url)
    assert r.status_code == 403
    assert r.headers["X-Egressguard-Rule"] == "guard:loopback"
    assert upstream.peers == []


def test_other_loopback_address_is_denied_when_only_one_is_named(gateway_factory, upstream):
    gw = gateway_factory(resolve={"rebind.test": "127.0.0.2"})
    r = httpx.get(f"http://rebind.test:{upstream.port}/", proxy=gw.url)
    assert r.status_code == 403 and r.headers["X-Egressguard-Rule"] == "guard:loopback"


def test_name_with_any_special_address_is_denied(gateway_factory, upstream):
    gw = gateway_factory(resolve={"mixed.test": "127.0.0.1,10.0.0.7"})
    r = httpx.get(f"http://mixed.test:{upstream.port}/", proxy=gw.url)
    assert r.status_code == 403 and r.headers["X-Egressguard-Rule"] == "guard:private"


@pytest.mark.parametrize("host", ["2852039166", "0xA9FEA9FE", "0251.0376.0251.0376",
                                  "169.254.43518", "[::ffff:169.254.169.254]",
                                  "[64:ff9b::a9fe:a9fe]"])
def test_metadata_address_in_any_ip_literal_encoding_is_denied(gateway_factory, host):
    gw = gateway_factory()
    out = raw(gw.port, f"GET http://{host}/latest HTTP/1.1\r\nHost: {host}\r\n"
                       "Connection: close\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 403"), out
    assert b"guard:link-local" in out


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "[::ffff:127.0.0.1]"])
def test_loopback_literal_encodings_reach_the_checked_address(gateway_factory, upstream, host):
    gw = gateway_factory()
    out = raw(gw.port, f"GET http://{host}:{upstream.port}/enc HTTP/1.1\r\n"
                       f"Host: {host}:{upstream.port}\r\nConnection: close\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200"), out
    assert b'"path": "/enc"' in out


@pytest.mark.parametrize("headers,why", [
    ("Host: evil.test\r\n", b"does not match"),
    ("Host: up.test:1\r\n", b"does not match"),
    ("", b"missing Host"),
    ("Host: up.test\r\nHost: up.test\r\n", b"duplicate Host"),
])
def test_host_header_inconsistent_with_target_is_400(gateway_factory, upstream, headers, why):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    out = raw(gw.port, f"GET http://up.test/ HTTP/1.1\r\n{headers}\r\n".encode())
    assert out.startswith(b"HTTP/1.1 400"), out
    assert why in out
    assert upstream.peers == []


def test_http10_absolute_form_without_host_is_decided_by_the_uri_and_forwarded_with_host(
        gateway_factory, upstream):
    gw = gateway_factory()
    out = raw(gw.port, f"GET http://127.0.0.1:{upstream.port}/h10 HTTP/1.0\r\n"
                       "Accept: */*\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200"), out
    echoed = json.loads(out.partition(b"\r\n\r\n")[2])
    assert echoed["path"] == "/h10"
    assert [v for k, v in echoed["headers"] if k.lower() == "host"] == [
        f"127.0.0.1:{upstream.port}"]
    denied = raw(gw.port, b"GET http://127.0.0.9/ HTTP/1.0\r\n\r\n")
    assert denied.startswith(b"HTTP/1.1 403") and b"127.0.0.9:80" in denied
    # HTTP/1.1 still requires Host, and HTTP/0.9 (no headers at all) is not spoken.
    for request in (b"GET http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % upstream.port,
                    b"GET http://127.0.0.1:%d/\r\n\r\n" % upstream.port):
        assert raw(gw.port, request).startswith(b"HTTP/1.1 400")
    assert len(upstream.peers) == 1


@pytest.mark.parametrize("request_bytes", [
    "GET http://127.0.0.1:4032/ HTTP/1.1\r\nHost: 127.0.0.1:4032\u00b2\r\n\r\n",
    "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:\u00b9\r\n\r\n",
    "CONNECT 127.0.0.1:44\u00b3 HTTP/1.1\r\nHost: 127.0.0.1:44\r\n\r\n",
])
def test_non_ascii_digits_in_a_port_are_400_not_a_crash(gateway_factory, request_bytes, caplog):
    gw = gateway_factory()
    # Read as latin-1, the byte 0xb2 is "\u00b2", which str.isdigit() calls a digit.
    out = raw(gw.port, request_bytes.encode("latin-1"))
    assert out.startswith(b"HTTP/1.1 400"), out
    assert "Traceback" not in caplog.text and "failed" not in caplog.text


@pytest.mark.parametrize("request_bytes", [
    b"POST http://up.test/ HTTP/1.1\r\nHost: up.test\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST http://up.test/ HTTP/1.1\r\nHost: up.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"GET http://up.test/ HTTP/1.1\r\nHost: up.test\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nab",
    b"GARBAGE\r\n\r\n",
    b"GET http://up.test/ HTTP/1.1\r\nHost up.test\r\n\r\n",
])
def test_request_smuggling_and_garbage_are_400(gateway_factory, upstream, request_bytes):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    out = raw(gw.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 400"), out
    assert upstream.peers == []


def test_origin_form_and_https_targets_are_400(gateway_factory):
    gw = gateway_factory()
    assert raw(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    out = raw(gw.port, b"GET https://x.test/ HTTP/1.1\r\nHost: x.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b"CONNECT" in out


def test_keep_alive_reuses_both_client_and_upstream_connections(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    with httpx.Client(proxy=gw.url) as client:
        ports = {json.loads(client.get(f"http://up.test:{upstream.port}/{i}").text)["peer_port"]
                 for i in range(5)}
    assert len(ports) == 1
    assert len(upstream.peers) == 1


def test_chunked_request_body_streams_to_upstream(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})

    def body():
        for _ in range(64):
            yield b"y" * 16384

    with httpx.Client(proxy=gw.url) as client:
        r = client.post(f"http://up.test:{upstream.port}/upload", content=body())
    seen = json.loads(r.text)
    assert seen["received"] == 64 * 16384
    assert ["Transfer-Encoding", "chunked"] in seen["headers"]


def test_content_length_body_and_big_response(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    with httpx.Client(proxy=gw.url) as client:
        r = client.post(f"http://up.test:{upstream.port}/", content=b"z" * 3_000_000)
        assert json.loads(r.text)["received"] == 3_000_000
        big = client.get(f"http://up.test:{upstream.port}/big/5000000")
        assert len(big.content) == 5_000_000
        head = client.head(f"http://up.test:{upstream.port}/big/77")
        assert head.status_code == 200 and head.headers["content-length"] == "77"
        again = client.get(f"http://up.test:{upstream.port}/after-head")
        assert json.loads(again.text)["path"] == "/after-head"


def test_chunked_response_is_streamed_not_buffered(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    arrivals = []
    with httpx.Client(proxy=gw.url) as client, client.stream(
            "GET", f"http://up.test:{upstream.port}/stream") as r:
        for line in r.iter_lines():
            if line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 3
    assert arrivals[2] - arrivals[0] > 0.4  # pieces arrived as sent, 0.3 s apart


def test_close_delimited_response_is_rechunked_for_http11_clients(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    with httpx.Client(proxy=gw.url) as client:
        r = client.get(f"http://up.test:{upstream.port}/close-delimited")
        assert r.content == b"until-close" * 100
        assert r.headers.get("transfer-encoding") == "chunked"


def test_pipelined_requests_are_answered_in_order(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    reqs = b"".join(f"GET http://up.test:{upstream.port}/p{i} HTTP/1.1\r\n"
                    f"Host: up.test:{upstream.port}\r\n\r\n".encode() for i in range(3))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(reqs)
        out = b""
        while out.count(b'"path"') < 3:
            out += sock.recv(65536)
    assert out.index(b"/p0") < out.index(b"/p1") < out.index(b"/p2")


def test_report_only_permits_and_records_the_would_be_denial(gateway_factory, upstream):
    gw = gateway_factory(CLOSED_POLICY, resolve={"up.test": "127.0.0.1"}, report_only=True)
    r = httpx.get(f"http://up.test:{upstream.port}/", proxy=gw.url)
    assert r.status_code == 200
    event = gw.sink.wait_for(lambda e: e.phase == "decision")
    assert (event.verdict, event.permitted, event.layer) == ("deny", True, "guard")


def test_unreachable_upstream_is_502_with_reason(gateway_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    r = httpx.get(f"http://up.test:{closed_port}/", proxy=gw.url)
    assert r.status_code == 502
    assert "cannot connect to 127.0.0.1" in r.text


def test_curl_through_the_gateway(gateway_factory, upstream):
    gw = gateway_factory(LOOPBACK_POLICY, resolve={"up.test": "127.0.0.1"})
    out = subprocess.run(["curl", "-s", "-x", gw.url, f"http://up.test:{upstream.port}/curl"],
                         capture_output=True, timeout=10, text=True).stdout
    assert json.loads(out)["path"] == "/curl"


def test_idle_upstream_connection_is_shared_by_later_clients(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    for i in range(3):
        with httpx.Client(proxy=gw.url) as client:
            assert client.get(f"http://up.test:{upstream.port}/c{i}").status_code == 200
        time.sleep(0.05)
    assert len(upstream.peers) == 1


def test_pooled_connection_is_not_used_for_another_host(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1", "alias.test": "127.0.0.1"})
    with httpx.Client(proxy=gw.url) as client:
        client.get(f"http://up.test:{upstream.port}/")
    time.sleep(0.05)  # parked, under up.test
    with httpx.Client(proxy=gw.url) as client:
        seen = json.loads(client.get(f"http://alias.test:{upstream.port}/").text)
    assert ["Host", f"alias.test:{upstream.port}"] in seen["headers"]
    assert len(upstream.peers) == 2
