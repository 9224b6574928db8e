"""Build the sink an enforcement point writes to (used by `egressguard serve`)."""

from __future__ import annotations

from typing import Any, Literal

from egressguard.audit.events import EventSink
from egressguard.audit.log import AuditLog, Retention
from egressguard.audit.sinks import ExfilMonitor, FanoutSink


def audit_sink(url: str | None = None, *, retention: Retention | None = None,
               exfil_threshold: int | None = None, exfil_window_s: float = 3600.0,
               writer: Literal["process", "thread"] = "process",
               cluster_key: Any = None, background: bool = True
               ) -> tuple[EventSink, AuditLog]:
    """(the sink to give the gateway, the log to `close()` on shutdown).

    `writer="process"` (default) seals and writes in a child process, keeping that CPU off
    the gateway's event loop (see bench/audit.py); `"thread"` keeps it in-process. With
    `exfil_threshold` (bytes), an `ExfilMonitor` watches bytes sent per destination over
    `exfil_window_s` and writes its warnings to the same log. With `cluster_key`
    (`keys.runtime.ClusterKey`) batches are sealed under data keys it wraps.
    `background`: the writer process runs as SCHED_IDLE while it keeps up
    (`audit.priority`).
    """
    log: AuditLog
    if writer == "process":
        from egressguard.audit.remote import ProcessAuditLog
        log = ProcessAuditLog(url, retention=retention, cluster_key=cluster_key,
                              background=background)
    else:
        log = AuditLog(url, retention=retention,
                       envelope=cluster_key.envelope if cluster_key is not None else None)
    if exfil_threshold is None:
        return log, log
    return FanoutSink([log, ExfilMonitor(exfil_threshold, exfil_window_s, warn_to=log)]), log


def suspend_with_key(cluster_key: Any, points: list[Any], engine: Any) -> None:
    """Bind enforcement points' checkpoints to the cluster's key (`keys.runtime.bind`):
    suspended while it is unavailable, resumed when it returns, each transition written
    to `engine`'s `audit_system` as a system event naming this host and process."""
    import os
    import socket

    from egressguard.audit.system import SystemEvents
    from egressguard.keys.runtime import bind

    events = SystemEvents(engine, cluster_key.cluster, f"{socket.gethostname()}:{os.getpid()}")
    bind(cluster_key, points, events.record)
