"""The proxy's TLS listener: workloads connect over TLS with a client certificate issued
by `--client-ca`, and the certificate's SPIFFE URI SAN or subject CN is their identity
(`gateway/auth.py`). A client without a certificate from that CA fails the handshake:
nothing is read from it. TLS 1.2 at least; session tickets stay on (resumption makes a
kept-alive workload's reconnects cheap, see docs/benchmarks.md)."""

from __future__ import annotations

import ssl
from pathlib import Path

from egressguard.errors import InputError


class TlsConfigError(InputError, ValueError):
    """A certificate, key or CA file the TLS listener cannot use."""


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """A server context that requires and verifies client certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"--tls-cert {cert} / --tls-key {key}: {exc}",
                             hint="a PEM certificate chain and its private key") from None
    try:
        context.load_verify_locations(cafile=client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"--client-ca {client_ca}: {exc}",
                             hint="the PEM CA that issues workload certificates") from None
    return context
