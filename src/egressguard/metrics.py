"""Prometheus metrics shared by every enforcement point (served at `/metrics`).

Defined in one module so that names and labels stay consistent; enforcement points update
them directly (cheap in-process counters), the API serves them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter("egressguard_decisions_total", "Decisions made, by outcome",
                    ["kind", "verdict", "layer", "permitted"])
BYTES = Counter("egressguard_bytes_total", "Bytes relayed, by direction (up = to upstream)",
                ["direction"])
# livesum: with `serve --workers N` (multiprocess mode) the workers alive, summed.
OPEN_TUNNELS = Gauge("egressguard_open_tunnels", "CONNECT tunnels currently open",
                     multiprocess_mode="livesum")
OPEN_CONNECTIONS = Gauge("egressguard_open_connections", "Client connections currently open",
                         multiprocess_mode="livesum")
DECISION_SECONDS = Histogram(
    "egressguard_decision_seconds", "Time spent deciding one request (engine only)",
    buckets=(1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3, 1e-2))
UPSTREAM_CONNECT_SECONDS = Histogram(
    "egressguard_upstream_connect_seconds", "Time to open the upstream TCP connection",
    buckets=(1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1, 5, 10))
POLICY_VERSION = Gauge("egressguard_policy_version_info", "Policy version in force (value 1)",
                       ["cluster", "version"])
MAX_IDENTITY_LABELS = 64  # distinct identity label values; the rest count as "other"
IDENTITY_DECISIONS = Counter(
    "egressguard_identity_decisions_total",
    f"Decisions by workload identity (authenticated callers; at most "
    f"{MAX_IDENTITY_LABELS} names per process, further ones as other)",
    ["identity", "verdict", "permitted"])
AUTH_THROTTLED = Counter(
    "egressguard_auth_throttled_total",
    "Proxy credentials refused unverified (429): their source address or identity name "
    "had too many invalid ones within a minute")
REVOKED = Counter("egressguard_revoked_total", "Open tunnels closed by a policy change")
EXFIL_WARNINGS = Counter("egressguard_exfiltration_warnings_total",
                         "Destinations that crossed the bytes-sent threshold", ["host"])
AUDIT_EVENTS = Counter("egressguard_audit_events_total",
                       "Audit events by outcome (written, dropped: queue full, failed: retried)",
                       ["result"])
AUDIT_PENDING = Gauge("egressguard_audit_pending", "Audit events queued, not yet written")
AUDIT_COMMIT_SECONDS = Histogram(
    "egressguard_audit_commit_seconds", "Time to write and commit one audit batch",
    buckets=(1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1, 5))
AUDIT_DEGRADED = Gauge("egressguard_audit_degraded",
                       "1 while audit records go to the local spool (store unreachable)")
BUDGET_OVERRUNS = Counter(
    "egressguard_budget_overruns_total",
    "Byte budgets exceeded: connections cut or refused (would_*: report-only budgets)",
    ["budget", "outcome"])
CLUSTER_KEY_SUSPENDED = Gauge(
    "egressguard_cluster_key_suspended",
    "1 while a cluster's customer-managed key fails the fleet's key check (Suspended)",
    ["cluster"])
