"""OpenTelemetry spans from decision events (enforce/tracing.py), read back through the
SDK's in-memory exporter: one span per permitted connection from decision to close, one
per refusal, never a field the audit log seals; off costs nothing."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from egressguard.audit.crypto import SECRET_FIELDS
from egressguard.enforce.events import DecisionEvent
from egressguard.enforce.tracing import (
    MAX_OPEN,
    Traces,
    TraceSink,
    TracingUnavailable,
    provider,
)


def event(**changes: object) -> DecisionEvent:
    fields: dict[str, object] = dict(
        time=time.time(), cluster="prod", kind="connect", host="pypi.org", port=443,
        verdict="allow", permitted=True, layer="application", rule="application:a/b",
        reason="secret reason", policy_version="7", connection_id="c1",
        client_address="10.9.9.9:4444", client_identity="secret-identity",
        method="CONNECT", path="/secret/path", resolved_address="151.101.0.223")
    fields.update(changes)
    return DecisionEvent(**fields)  # type: ignore[arg-type]


@pytest.fixture
def spans() -> tuple[TraceSink, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    found = provider(Traces.OFF, "test", exporter, install=False)
    assert found is not None
    return TraceSink(found), exporter


def test_a_permitted_tunnel_is_one_span_from_decision_to_close(spans) -> None:
    sink, exporter = spans
    opened = event()
    sink.emit(opened)
    assert exporter.get_finished_spans() == ()   # open until its close
    sink.emit(event(phase="close", time=opened.time + 2.5, bytes_up=1234, bytes_down=99,
                    close_cause="client"))
    (span,) = exporter.get_finished_spans()
    assert span.name == "egressguard.connect"
    assert (span.end_time - span.start_time) / 1e9 == pytest.approx(2.5, abs=1e-3)
    attributes = dict(span.attributes or {})
    assert attributes["server.address"] == "pypi.org" and attributes["server.port"] == 443
    assert attributes["egressguard.rule"] == "application:a/b"
    assert attributes["egressguard.bytes_up"] == 1234
    assert attributes["egressguard.close_cause"] == "client"
    assert dict(span.resource.attributes)["service.name"] == "test"


def test_spans_never_carry_what_the_audit_log_seals(spans) -> None:
    sink, exporter = spans
    sink.emit(event(permitted=False, verdict="deny", connection_id="c2"))
    sink.emit(event(kind="dns", connection_id="c3"))
    text = repr([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert len(exporter.get_finished_spans()) == 2
    for secret in ("10.9.9.9", "secret-identity", "/secret/path", "secret reason"):
        assert secret not in text
    assert set(SECRET_FIELDS) == {"client_address", "client_identity", "method", "path",
                                  "reason"}   # the fields left out above


def test_refusals_and_dns_answers_are_spans_of_their_own(spans) -> None:
    sink, exporter = spans
    sink.emit(event(verdict="deny", permitted=False, layer="budget", rule="budget:b"))
    sink.emit(event(kind="dns", port=None, connection_id="d1"))
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["egressguard.connect", "egressguard.dns"]
    sink.emit(event(phase="close", connection_id="never-opened"))  # ignored
    assert len(exporter.get_finished_spans()) == 2


def test_open_spans_are_bounded_and_ended_at_shutdown(spans, monkeypatch) -> None:
    sink, exporter = spans
    monkeypatch.setattr("egressguard.enforce.tracing.MAX_OPEN", 2)
    for i in range(3):
        sink.emit(event(connection_id=f"c{i}"))
    assert len(exporter.get_finished_spans()) == 1   # the third had no room: ended at once
    sink.close()
    assert len(exporter.get_finished_spans()) == 3
    assert MAX_OPEN == 100_000


def test_traces_off_builds_nothing_and_a_missing_sdk_is_a_clear_error(monkeypatch) -> None:
    assert provider(Traces.OFF, "x") is None
    import builtins

    real = builtins.__import__

    def no_sdk(name: str, *args: object, **kw: object) -> object:
        if name.startswith("opentelemetry.sdk"):
            raise ImportError(name)
        return real(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_sdk)
    with pytest.raises(TracingUnavailable, match=r"egressguard\[otel\]"):
        provider(Traces.CONSOLE, "x", install=False)


def test_a_short_exchange_record_is_one_finished_span_with_its_bytes(spans) -> None:
    sink, exporter = spans
    sink.emit(event(kind="http", phase="exchange", duration_s=0.25, bytes_up=7,
                    bytes_down=700, connection_id="x1"))
    (span,) = exporter.get_finished_spans()   # ended at once: there is no close to wait for
    assert span.name == "egressguard.http"
    assert (span.end_time - span.start_time) / 1e9 == pytest.approx(0.25, abs=1e-3)
    attributes = dict(span.attributes or {})
    assert (attributes["egressguard.bytes_down"], attributes["egressguard.close_cause"]) == (
        700, "done")
    assert not set(attributes.values()) & {"secret reason", "/secret/path", "secret-identity"}
