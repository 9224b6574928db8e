"""Moved to `egressguard.enforce.events` (what every enforcement point shares); this
re-export keeps old imports working."""

from egressguard.enforce.events import (
    CloseCause,
    DecisionEvent,
    DurableSink,
    EventSink,
    NullSink,
    Phase,
    emit_durably,
)

__all__ = ["CloseCause", "DecisionEvent", "DurableSink", "EventSink", "NullSink", "Phase",
           "emit_durably"]
