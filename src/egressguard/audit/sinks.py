"""Sinks that combine or watch events: `FanoutSink` and the exfiltration `ExfilMonitor`."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from egressguard.audit import metrics
from egressguard.audit.events import DecisionEvent, EventSink

log = logging.getLogger("egressguard.audit")


class FanoutSink:
    """Send each event to several sinks; one failing sink does not starve the others."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = tuple(sinks)

    def emit(self, event: DecisionEvent) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:
                log.exception("audit: sink %r failed", sink)

    async def record(self, event: DecisionEvent) -> None:
        """Durable on every sink that can be (`record`), emitted on the others."""
        for sink in self.sinks:
            record = getattr(sink, "record", None)
            if record is not None:
                await record(event)
            else:
                sink.emit(event)


@dataclass
class _Window:
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0
    warned: bool = False


class VolumeWindow:
    """Bytes sent per destination over a sliding window (pure: the caller passes `now`).

    `add` returns the window's total when this sample makes it cross `threshold` (once per
    crossing: it re-arms when the total falls back below the threshold), else None.
    """

    def __init__(self, threshold: int, window_s: float) -> None:
        if threshold <= 0 or window_s <= 0:
            raise ValueError("exfiltration threshold and window must be positive")
        self.threshold = threshold
        self.window_s = window_s
        self._by_key: dict[tuple[str, str], _Window] = {}

    def add(self, key: tuple[str, str], sent: int, now: float) -> int | None:
        window = self._by_key.get(key)
        if window is None:
            if sent <= 0:
                return None
            window = self._by_key[key] = _Window()
        self._expire(window, now)
        if sent > 0:
            window.samples.append((now, sent))
            window.total += sent
        if window.total < self.threshold:
            window.warned = False
            if not window.samples:
                del self._by_key[key]
            return None
        if window.warned:
            return None
        window.warned = True
        return window.total

    def total(self, key: tuple[str, str], now: float) -> int:
        window = self._by_key.get(key)
        if window is None:
            return 0
        self._expire(window, now)
        return window.total

    def _expire(self, window: _Window, now: float) -> None:
        horizon = now - self.window_s
        while window.samples and window.samples[0][0] <= horizon:
            window.total -= window.samples.popleft()[1]


class ExfilMonitor:
    """Warn when the bytes sent to one destination (cluster, host) within `window_s`
    reach `threshold`: a log warning, `egressguard_exfiltration_warnings_total{host}` and
    an audit record of kind `warning` (layer `exfiltration`) sent to `warn_to`.

    Counts the `bytes_up` of close events (what a connection sent in total, attributed at
    its end); a long-lived tunnel is therefore counted when it closes.
    """

    def __init__(self, threshold: int, window_s: float = 3600.0,
                 warn_to: EventSink | None = None) -> None:
        self.window = VolumeWindow(threshold, window_s)
        self.warn_to = warn_to
        self._lock = threading.Lock()

    def emit(self, event: DecisionEvent) -> None:
        if event.phase == "decision" or event.bytes_up <= 0 or event.kind == "warning":
            return
        now = time.time()
        with self._lock:
            crossed = self.window.add((event.cluster, event.host), event.bytes_up, now)
        if crossed is None:
            return
        reason = (f"{crossed} bytes sent to {event.host} within "
                  f"{self.window.window_s:g} s (threshold {self.window.threshold})")
        log.warning("exfiltration volume: cluster %s: %s", event.cluster, reason)
        metrics.EXFIL_WARNINGS.labels(event.host).inc()
        if self.warn_to is not None:
            self.warn_to.emit(DecisionEvent(
                time=now, cluster=event.cluster, kind="warning", host=event.host,
                port=event.port, verdict=event.verdict, permitted=event.permitted,
                layer="exfiltration", rule="exfiltration:volume", reason=reason,
                policy_version=event.policy_version, connection_id=event.connection_id,
                client_address=event.client_address,
                client_identity=event.client_identity, bytes_up=crossed))
