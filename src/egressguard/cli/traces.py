"""`--traces` on the long-running commands (`serve`, `dns serve`, `api`): see
`enforce/tracing.py` for what is traced and what never is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from egressguard.enforce.tracing import Traces, TraceSink, provider

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from egressguard.enforce.events import EventSink

TracesOpt = Annotated[Traces, typer.Option(
    "--traces", envvar="EGRESSGUARD_TRACES", case_sensitive=False,
    help="OpenTelemetry traces: off, console (stderr) or otlp (OTEL_EXPORTER_OTLP_ENDPOINT; "
         "needs the otel extra)")]


class Traced:
    """The process's tracer provider (None: traces off) and the sink making spans."""

    def __init__(self, kind: Traces, service: str) -> None:
        self.provider: TracerProvider | None = provider(kind, service)
        self.sink = TraceSink(self.provider) if self.provider is not None else None

    def wrap(self, sink: EventSink) -> EventSink:
        """`sink`, and the spans too when traces are on."""
        if self.sink is None:
            return sink
        from egressguard.audit.sinks import FanoutSink

        return FanoutSink([sink, self.sink])

    def shutdown(self) -> None:
        """End open spans and export what is buffered."""
        if self.sink is not None:
            self.sink.close()
        if self.provider is not None:
            self.provider.shutdown()
