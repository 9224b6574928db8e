"""Moved to `egressguard.metrics` (counters every enforcement point shares, below the
audit floor); this re-export keeps old imports working."""

from egressguard.metrics import (
    AUDIT_COMMIT_SECONDS,
    AUDIT_DEGRADED,
    AUDIT_EVENTS,
    AUDIT_PENDING,
    BYTES,
    DECISION_SECONDS,
    DECISIONS,
    EXFIL_WARNINGS,
    OPEN_CONNECTIONS,
    OPEN_TUNNELS,
    POLICY_VERSION,
    REVOKED,
    UPSTREAM_CONNECT_SECONDS,
)

__all__ = ["AUDIT_COMMIT_SECONDS", "AUDIT_DEGRADED", "AUDIT_EVENTS", "AUDIT_PENDING",
           "BYTES", "DECISIONS", "DECISION_SECONDS", "EXFIL_WARNINGS", "OPEN_CONNECTIONS",
           "OPEN_TUNNELS", "POLICY_VERSION", "REVOKED", "UPSTREAM_CONNECT_SECONDS"]
