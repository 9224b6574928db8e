"""The event every enforcement point emits, and the sink interface that receives it.

Enforcement points (gateway, DNS filter, library check) call `sink.emit(event)` once a
decision is made (before a denied client sees its refusal) and again, with `phase="close"`,
when a permitted connection ends, carrying byte counts, duration and the closing cause.
A short permitted exchange (an HTTP request answered within `SHORT_EXCHANGE_S` on a
pooled upstream) is written as **one** record instead, `phase="exchange"`: its decision
and its close at once (time is the decision's; bytes, duration and cause are the close's),
so the keep-alive path pays for one audit row, not two. An exchange still open after
`SHORT_EXCHANGE_S` gets its decision record then, and a close record at its end. Readers
treat an exchange record as both a decision and a close (`audit.query.Filter`, the
recommender, replay, traces). Refusals are never deferred: they are recorded durably
before the client sees them, as before.
`emit` must not block: sinks queue and write off the hot path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

Phase = Literal["decision", "close", "exchange"]
SHORT_EXCHANGE_S = 1.0   # an exchange open longer gets its decision record written then
CloseCause = Literal["", "client", "upstream", "revoked", "timeout", "error", "shutdown",
                     "budget", "suspended"]


@dataclass(slots=True)
class DecisionEvent:
    """One decision or close record. Treat as immutable once emitted: not `frozen`
    only because a frozen dataclass costs twice as much to build (`object.__setattr__`
    per field), and enforcement points build two per request on their hot path."""

    time: float                     # UNIX seconds (wall clock, taken by the emitter)
    cluster: str
    kind: str                       # http | connect | dns | callout | flow
    host: str                       # normalised destination host
    port: int | None
    verdict: str                    # what the policy said: allow | deny
    permitted: bool                 # what was done (report-only permits a deny)
    layer: str
    rule: str
    reason: str
    policy_version: str = ""
    phase: Phase = "decision"
    connection_id: str = ""         # links a decision to its close event
    client_address: str = ""
    client_identity: str = ""
    resolved_address: str = ""
    method: str = ""
    path: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    duration_s: float = 0.0
    close_cause: CloseCause = ""
    protocol: str = ""              # tcp | udp (flow and dns), for network-rule recommendations
    callout_type: str = ""          # for kind callout: sql, kusto, ...

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventSink(Protocol):
    def emit(self, event: DecisionEvent) -> None: ...


class DurableSink(EventSink, Protocol):
    """A sink that can write an event and say when it is durable (`AuditLog`)."""

    async def record(self, event: DecisionEvent) -> None: ...


async def emit_durably(sink: EventSink, event: DecisionEvent) -> None:
    """Record `event` and, if the sink supports it, return only once it is durable.

    Enforcement points await this for a denial before the client sees the refusal; for
    permitted calls plain `emit` (fire-and-forget) is enough. Raises `TimeoutError` when
    the sink cannot make the event durable in time (the caller still refuses the call).
    """
    record = getattr(sink, "record", None)
    if record is None:
        sink.emit(event)
        return
    await record(event)


class NullSink:
    """Discards events (tests and benchmarks without an audit log)."""

    def emit(self, event: DecisionEvent) -> None:
        return None
