"""The TLS proxy listener: a client certificate's SPIFFE URI SAN (or CN) is the
workload's identity. The CA is trustme's; client certificates with a URI SAN are signed
with its key (trustme itself mints only DNS, IP and e-mail names)."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from egressguard.gateway.mtls import TlsConfigError, server_context
from tests.gateway.conftest import Running, Server

POLICY = """
restrict_outbound_network_access: Enabled
trusted_ranges: [127.0.0.0/8]
identities:
  web: {spiffe_ids: ["spiffe://prod.example/ns/shop/sa/web"]}
  legacy-vm: {common_names: [vm-17.internal]}
application_rule_collections:
  - name: web-only
    priority: 100
    identities: [web, legacy-vm]
    rules:
      - {name: up, targets: [up.test], protocols: ["http:*"]}
"""


def client_cert(ca: trustme.CA, tmp: Path, name: str, *, uri: str | None = None,
                cn: str = "workload", signer: trustme.CA | None = None) -> Path:
    """A PEM file with a client key and certificate (URI SAN optional) from `ca`."""
    issuer = signer or ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(issuer._certificate.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.ExtendedKeyUsage(
                   [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if uri:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(uri)]), critical=False)
    cert = builder.sign(issuer._private_key, hashes.SHA256())
    path = tmp / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
                     + cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def tls_gateway(gateway_factory: Callable[..., Running], ca: trustme.CA,
                tmp_path: Path) -> Running:
    gw = gateway_factory(POLICY, resolve={"up.test": "127.0.0.1"})
    server = ca.issue_cert("proxy.test", "127.0.0.1")
    cert, key, cafile = tmp_path / "proxy.pem", tmp_path / "proxy.key", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cafile))
    context = server_context(cert, key, cafile)
    asyncio.run_coroutine_threadsafe(gw.gateway.start_tls("127.0.0.1", 0, context),
                                     gw.loop).result(5)
    return gw


def get(gw: Running, ca: trustme.CA, upstream: Server, identity: Path | None) -> int:
    return tls_status(gw.gateway.tls_addresses[0][1], ca, upstream, identity)


def tls_status(port: int, ca: trustme.CA, upstream: Server, identity: Path | None) -> int:
    """The status of one `GET` to `upstream` through the TLS proxy listener at `port`,
    presenting the client certificate `identity` (0: no answer at all)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if identity is not None:
        context.load_cert_chain(identity)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="proxy.test") as sock:
        target = f"up.test:{upstream.port}"
        sock.sendall(f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0  # 0: no answer at all


def test_spiffe_ids_and_cns_map_to_identities_with_different_verdicts(
        tls_gateway: Running, ca: trustme.CA, upstream: Server, tmp_path: Path) -> None:
    web = client_cert(ca, tmp_path, "web", uri="spiffe://prod.example/ns/shop/sa/web")
    other = client_cert(ca, tmp_path, "batch", uri="spiffe://prod.example/ns/shop/sa/batch")
    vm = client_cert(ca, tmp_path, "vm", cn="vm-17.internal")
    assert get(tls_gateway, ca, upstream, web) == 200
    assert get(tls_gateway, ca, upstream, other) == 403
    assert get(tls_gateway, ca, upstream, vm) == 200
    seen = {(e.client_identity, e.verdict) for e in tls_gateway.sink.events
            if e.kind == "http" and e.phase != "close"}
    assert seen == {("web", "allow"), ("", "deny"), ("legacy-vm", "allow")}


def test_a_client_without_a_certificate_from_the_ca_fails_the_handshake(
        tls_gateway: Running, ca: trustme.CA, upstream: Server, tmp_path: Path) -> None:
    stranger = client_cert(ca, tmp_path, "stranger",
                           uri="spiffe://prod.example/ns/shop/sa/web", signer=trustme.CA())
    for identity in (None, stranger):
        # TLS 1.3 clients learn of the refusal only when they read: an alert or nothing.
        try:
            status = get(tls_gateway, ca, upstream, identity)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            status = 0
        assert status == 0
    assert not [e for e in tls_gateway.sink.events if e.kind == "http"]


def test_unusable_certificate_files_are_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    with pytest.raises(TlsConfigError, match="--tls-cert"):
        server_context(missing, missing, missing)
