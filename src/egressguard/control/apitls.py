"""TLS for the REST API and dashboard: a certificate the operator gives, or one made here.

Tokens and session cookies cross this connection, so anything beyond loopback should be
HTTPS. `--api-tls-cert/--api-tls-key` name a PEM pair; `--api-tls-self-signed` makes an
ECDSA P-256 certificate for the listen address (plus `localhost` and `127.0.0.1`), keeps
it in the data home (`api-tls/`, key 0600) and reuses it on the next start while it is
valid for another week and names the same hosts. Clients pin it by the SHA-256
fingerprint printed at start (`curl --cacert` on the certificate file works too, since a
self-signed certificate is its own CA).

Each pair is loaded into an `ssl.SSLContext` before the server starts, so a missing
file, a key that does not match, or an unreadable PEM is one line at start-up, not an
error in the first handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from egressguard.errors import InputError

SELF_SIGNED_DIR = "api-tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
LIFETIME = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=7)
ALWAYS = ("localhost", "127.0.0.1", "::1")


class TLSConfigError(InputError, ValueError):
    """An API certificate or key that cannot be used (missing, unreadable, mismatched)."""


@dataclass(frozen=True)
class ApiTLS:
    """The pair the API serves with, and its SHA-256 fingerprint (`AA:BB:...`)."""

    cert: Path
    key: Path
    fingerprint: str
    self_signed: bool = False


def fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as `openssl x509 -fingerprint`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def check_pair(cert: Path, key: Path) -> ApiTLS:
    """The pair, verified loadable together; TLSConfigError naming the file otherwise."""
    for path, what in ((cert, "--api-tls-cert"), (key, "--api-tls-key")):
        if not path.is_file():
            raise TLSConfigError(f"{what} {path}: no such file",
                                 hint="give a PEM file, or use --api-tls-self-signed")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"--api-tls-cert {cert} / --api-tls-key {key}: cannot be "
                             f"used together: {exc.reason or exc}",
                             hint="the key must be the certificate's, both PEM") from None
    except OSError as exc:
        raise TLSConfigError(f"{cert} / {key}: cannot read: {exc.strerror or exc}") from None
    try:
        return ApiTLS(cert, key, fingerprint(cert.read_bytes()))
    except ValueError as exc:
        raise TLSConfigError(f"--api-tls-cert {cert}: not a PEM certificate: {exc}"
                             ) from None


def _hosts(listen_host: str) -> list[str]:
    hosts = list(ALWAYS)
    if listen_host and listen_host not in ("0.0.0.0", "::") and listen_host not in hosts:
        hosts.append(listen_host)
    return hosts


def _reusable(cert: Path, key: Path, hosts: list[str]) -> bool:
    """True if the kept certificate is valid for another `RENEW_BEFORE` and names `hosts`."""
    from cryptography import x509

    try:
        found = x509.load_pem_x509_certificate(cert.read_bytes())
        san = found.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    names |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    fresh = found.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE
    return fresh and key.is_file() and set(hosts) <= names


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only (created 0600, then replaced)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def self_signed(home: Path, listen_host: str) -> ApiTLS:
    """The data home's self-signed pair for `listen_host`, made (or renewed) if needed."""
    folder = home / SELF_SIGNED_DIR
    cert, key = folder / CERT_FILE, folder / KEY_FILE
    hosts = _hosts(listen_host)
    if not _reusable(cert, key, hosts):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_pem, key_pem = _generate(hosts)
        _write_private(key, key_pem)
        _write_private(cert, cert_pem)
    pair = check_pair(cert, key)
    return ApiTLS(pair.cert, pair.key, pair.fingerprint, self_signed=True)


def _generate(hosts: list[str]) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egressguard API"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egressguard")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + LIFETIME)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            # its own CA, so `curl --cacert cert.pem` verifies it; it signs nothing else
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                private.public_key()), critical=False)
            .sign(private, hashes.SHA256()))
    key_pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def resolve(cert: Path | None, key: Path | None, self_signed_flag: bool, home: Path | None,
            listen_host: str) -> ApiTLS | None:
    """What the three options ask for: None (plain HTTP), the given pair, or the
    self-signed one; TLSConfigError when they contradict each other."""
    if self_signed_flag and (cert or key):
        raise TLSConfigError("give --api-tls-cert/--api-tls-key or --api-tls-self-signed, "
                             "not both")
    if (cert is None) != (key is None):
        raise TLSConfigError("--api-tls-cert and --api-tls-key go together")
    if cert is not None and key is not None:
        return check_pair(cert, key)
    if self_signed_flag:
        if home is None:
            from egressguard.paths import data_home

            home = data_home()
        return self_signed(home, listen_host)
    return None
