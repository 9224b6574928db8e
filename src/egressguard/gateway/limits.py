"""Bounds on what one client (or one upstream) can make the gateway hold, each a `serve`
option, and the pure decisions over them (which connection to admit, which deadline has
passed), kept free of I/O so they can be tested as tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 32 * 1024   # request line + headers; more is a 431
    header_timeout: float = 10.0        # accept (or a later head's first byte) to end of head; 408
    idle_timeout: float = 300.0         # no byte either way on a connection or tunnel
    connect_timeout: float = 10.0       # upstream TCP connect; 504
    response_timeout: float = 60.0      # request sent to end of the upstream's response head; 504
    max_response_header_bytes: int = 64 * 1024  # upstream status line + headers; more is a 502
    max_connections: int = 4096         # concurrent client connections; 503 beyond
    max_connections_per_source: int = 256  # concurrent connections of one client address; 503
    shutdown_deadline: float = 10.0     # SIGTERM: how long open requests may finish
    audit_timeout: float = 5.0          # a refusal waits this long for its audit record
    # CONNECT to port 443 whose first client bytes are not a TLS ClientHello.
    non_tls_443: Literal["deny", "allow"] = "deny"


def admission_refusal(limits: Limits, open_total: int, open_from_source: int,
                      draining: bool) -> str | None:
    """Why a new connection is refused (503 and closed at once), or None to admit it.

    The per-source cap comes first: one address holding many silent sockets must not take
    the budget every other client shares.
    """
    if draining:
        return "shutting down"
    if open_from_source >= limits.max_connections_per_source:
        return "too many concurrent connections from this address"
    if open_total >= limits.max_connections:
        return "too many concurrent connections"
    return None


Breach = tuple[int, str] | None   # (status to answer with, or 0 to close quietly; why)


def deadline_breach(limits: Limits, now: float, *, accepted: float, served: bool,
                    in_head: bool, head_started: float, awaiting_response: float,
                    idle_since: float) -> Breach:
    """Which deadline of a client connection has passed at `now`, if any.

    `served`: a request head was ever completed (until then the header timeout runs from
    accept, so a socket that never sends a byte cannot outlive it). `awaiting_response`:
    since when the upstream owes the response head (0 when it owes nothing).
    """
    if not served and now - accepted > limits.header_timeout:
        return 408, f"no request head within {limits.header_timeout:g} s of connecting"
    if in_head and now - head_started > limits.header_timeout:
        return 408, f"request head not received within {limits.header_timeout:g} s"
    if awaiting_response and now - awaiting_response > limits.response_timeout:
        return 504, f"upstream sent no response head within {limits.response_timeout:g} s"
    if now - idle_since > limits.idle_timeout:
        return 0, f"idle for {limits.idle_timeout:g} s"
    return None
