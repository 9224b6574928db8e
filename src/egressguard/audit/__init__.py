"""Evidence: a record of every decision any enforcement point makes."""

from egressguard.audit.events import (
    DecisionEvent,
    DurableSink,
    EventSink,
    NullSink,
    emit_durably,
)

__all__ = ["DecisionEvent", "DurableSink", "EventSink", "NullSink", "emit_durably"]
