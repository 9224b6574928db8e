"""Traces from a running gateway: a tunnel is one span from its decision to its close with
its bytes; a refusal a span of its own; the audit sink still gets every event."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from egressguard.audit.sinks import FanoutSink
from egressguard.enforce.tracing import Traces, TraceSink, provider
from tests.gateway.conftest import ListSink, connect_tunnel, raw

pytestmark = pytest.mark.timeout(30)


def test_tunnel_and_refusal_spans_from_a_running_gateway(gateway_factory, echo):
    exporter = InMemorySpanExporter()
    found = provider(Traces.OFF, "egressguard-gateway", exporter, install=False)
    assert found is not None
    audit = ListSink()
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"},
                         sink=FanoutSink([audit, TraceSink(found)]))
    with connect_tunnel(gw.port, f"up.test:{echo.port}") as sock:
        sock.sendall(b"x" * 5000)
        got = 0
        while got < 5000:
            got += len(sock.recv(65536))
    refused = raw(gw.port, b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 403")
    end = time.monotonic() + 3
    while len(exporter.get_finished_spans()) < 2 and time.monotonic() < end:
        time.sleep(0.02)
    spans = {dict(s.attributes or {})["server.address"]: s
             for s in exporter.get_finished_spans()}
    tunnel, denied = spans["up.test"], spans["denied.test"]
    assert tunnel.name == "egressguard.connect" and tunnel.end_time > tunnel.start_time
    assert dict(tunnel.attributes or {})["egressguard.bytes_up"] == 5000
    assert dict(denied.attributes or {})["egressguard.permitted"] is False
    assert denied.end_time == denied.start_time
    assert [e.phase for e in audit.events if e.host == "up.test"] == ["decision", "close"]
