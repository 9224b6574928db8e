"""Evidence: a record of every decision any enforcement point makes."""

from egressguard.audit.events import DecisionEvent, EventSink, NullSink

__all__ = ["DecisionEvent", "EventSink", "NullSink"]
