"""Optional OpenTelemetry traces (`--traces console|otlp` on `serve`, `dns serve` and
`api`; off unless asked for, and then only with the `otel` extra installed).

Why from events: every enforcement point already hands each decision and each close to
its sink (`DecisionEvent`), off the hot path. `TraceSink` turns them into spans, so no
enforcement point carries tracing code and nothing is paid when traces are off:

* a permitted tunnel or HTTP exchange is one span, `egressguard.connect` /
  `egressguard.http`, from its decision to its close (bytes and closing cause added);
* a refusal, a DNS answer and a callout decision are spans of their own, with no length;
* the REST API's requests are traced by FastAPI itself once a tracer provider is set.

What a span carries: cluster, kind, verdict, permitted, layer, rule, destination host and
port, the policy version, and at close the bytes and the cause. Never what the audit log
seals (client address and identity, method, path, reason: `audit.crypto.SECRET_FIELDS`):
traces leave the host, often unencrypted, for a collector with other readers.

`console` writes each span as one JSON line to stderr (for a look); `otlp` exports over OTLP/HTTP to
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`), the SDK's standard variables.
`OTEL_SERVICE_NAME` overrides the service name.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from egressguard.enforce.events import DecisionEvent
from egressguard.errors import InputError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

MAX_OPEN = 100_000   # spans of open connections held; beyond, a decision span ends at once
_CONNECTIONS = frozenset({"connect", "http"})


class Traces(enum.StrEnum):
    OFF = "off"
    CONSOLE = "console"
    OTLP = "otlp"


class TracingUnavailable(InputError):
    """Traces were asked for, but the OpenTelemetry SDK (the `otel` extra) is missing."""


def provider(kind: Traces | str, service: str, exporter: SpanExporter | None = None,
             *, install: bool = True) -> TracerProvider | None:
    """The tracer provider for `kind` (None when off), installed as the process's global
    one unless `install` is false (FastAPI traces the API through the global one).
    `exporter` replaces the one `kind` names (tests: the SDK's in-memory exporter)."""
    kind = Traces(kind)
    if kind is Traces.OFF and exporter is None:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise TracingUnavailable(
            f"--traces {kind.value}: the OpenTelemetry SDK is not installed (hint: pip "
            "install 'egressguard[otel]')") from None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    found = TracerProvider(resource=resource)
    if exporter is not None:
        found.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind is Traces.CONSOLE:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        found.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingUnavailable(
                "--traces otlp: the OTLP exporter is not installed (hint: pip install "
                "'egressguard[otel]')") from None
        found.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if install:
        trace.set_tracer_provider(found)
    return found


def _attributes(event: DecisionEvent) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "egressguard.cluster": event.cluster, "egressguard.kind": event.kind,
        "egressguard.verdict": event.verdict, "egressguard.permitted": event.permitted,
        "egressguard.layer": event.layer, "egressguard.rule": event.rule,
        "egressguard.policy_version": event.policy_version, "server.address": event.host}
    if event.port is not None:
        attributes["server.port"] = event.port
    if event.resolved_address:
        attributes["network.peer.address"] = event.resolved_address
    return attributes


class TraceSink:
    """An `EventSink` that makes spans of decisions and connections (see the module)."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self.tracer = tracer_provider.get_tracer("egressguard")
        self._open: dict[str, Any] = {}   # connection id -> its span, until its close
        self._lock = threading.Lock()

    def emit(self, event: DecisionEvent) -> None:
        at = int(event.time * 1e9)
        if event.phase == "close":
            with self._lock:
                span = self._open.pop(event.connection_id, None)
            if span is None:
                return
            span.set_attributes({"egressguard.bytes_up": event.bytes_up,
                                 "egressguard.bytes_down": event.bytes_down,
                                 "egressguard.close_cause": event.close_cause or "done"})
            span.end(end_time=at)
            return
        span = self.tracer.start_span(f"egressguard.{event.kind}", start_time=at,
                                      attributes=_attributes(event))
        if event.phase == "exchange":   # a short exchange: decision and close at once
            span.set_attributes({"egressguard.bytes_up": event.bytes_up,
                                 "egressguard.bytes_down": event.bytes_down,
                                 "egressguard.close_cause": event.close_cause or "done"})
            span.end(end_time=at + int(event.duration_s * 1e9))
            return
        if event.permitted and event.kind in _CONNECTIONS and event.connection_id:
            with self._lock:
                if len(self._open) < MAX_OPEN and event.connection_id not in self._open:
                    self._open[event.connection_id] = span
                    return
        span.end(end_time=at)

    def close(self) -> None:
        """End what is still open (at shutdown)."""
        with self._lock:
            spans, self._open = list(self._open.values()), {}
        for span in spans:
            span.end()
