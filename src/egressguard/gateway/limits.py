"""Bounds on what one client can make the gateway hold (each a `serve` option)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 32 * 1024   # request line + headers; more is a 431
    header_timeout: float = 10.0        # first byte to end of headers (slowloris); 408
    idle_timeout: float = 300.0         # no byte either way on a connection or tunnel
    connect_timeout: float = 10.0       # upstream TCP connect; 504
    max_connections: int = 4096         # concurrent client connections; 503 beyond
    shutdown_deadline: float = 10.0     # SIGTERM: how long open requests may finish
    audit_timeout: float = 5.0          # a refusal waits this long for its audit record
    # CONNECT to port 443 whose first client bytes are not a TLS ClientHello.
    non_tls_443: Literal["deny", "allow"] = "deny"
