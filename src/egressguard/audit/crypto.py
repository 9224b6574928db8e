"""Encryption at rest and tamper evidence for the audit log.

One 32-byte master key (`$EGRESSGUARD_AUDIT_KEY`, base64, or `<data home>/audit.key`,
created 0600 on first use) derives two keys with HKDF: an AES-256-GCM key that seals each
record's sensitive fields, and an HMAC-SHA256 key that chains batches.

The sealed fields (client address and identity, method, path, reason) are the ones that
name people or carry secrets (paths can hold SAS tokens). The filterable columns (time,
cluster, kind, host, port, verdict, layer, rule, bytes) stay in clear so that queries use
indexes; they are bound to the ciphertext as GCM associated data, so editing any of them
makes the record fail to open (`logs verify` reports it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import marshal
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from egressguard.errors import Unavailable

KEY_ENV = "EGRESSGUARD_AUDIT_KEY"
KEY_FILE = "audit.key"
NONCE = 12


class KeyError_(Unavailable, ValueError):
    """The audit key is missing or malformed."""


def load_or_create_key(path: Path | None = None) -> bytes:
    """The master key: from the environment, else the key file (created 0600 if absent)."""
    env = os.environ.get(KEY_ENV)
    if env:
        try:
            key = base64.b64decode(env, validate=True)
        except binascii.Error:
            raise KeyError_(f"{KEY_ENV} is not base64") from None
        if len(key) != 32:
            raise KeyError_(f"{KEY_ENV} must decode to 32 bytes, got {len(key)}")
        return key
    if path is None:
        from egressguard.paths import data_home
        path = data_home() / KEY_FILE
    if not path.exists():
        _create(path)
    key = base64.b64decode(path.read_text().strip())
    if len(key) != 32:
        raise KeyError_(f"{path}: expected a base64 32-byte key")
    return key


def _create(path: Path) -> None:
    """Write a fresh key atomically: several processes starting at once agree on one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: use its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _derive(master: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(master)


class Sealer:
    """Seals and opens record payloads; computes the batch chain MACs."""

    def __init__(self, master: bytes) -> None:
        self._aead = AESGCM(_derive(master, b"egressguard audit payload v1"))
        self.encrypt = self._aead.encrypt   # the writer's batch loop seals inline
        self._mac_key = _derive(master, b"egressguard audit chain v1")

    def open(self, payload: bytes, clear: bytes) -> dict[str, Any] | None:
        """The sealed fields, or None when the record was altered (or another key)."""
        try:
            plain = self._aead.decrypt(payload[:NONCE], payload[NONCE:], clear)
        except (InvalidTag, ValueError):
            return None
        return _fields(plain)

    def chain(self, prev: bytes, writer: str, seq: int, payloads: list[bytes]) -> bytes:
        """MAC of one batch, linked to the previous batch of the same writer."""
        return _chain(self._mac_key, prev, writer, seq, payloads)

    def mark(self, label: str, *parts: bytes | str | int) -> bytes:
        """An HMAC over `label` and `parts` with the chain key (head and prune records)."""
        message = b"|".join(p if isinstance(p, bytes) else str(p).encode()
                            for p in (label, *parts))
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()


def _fields(plain: bytes) -> dict[str, Any]:
    if plain[:1] == b"0":
        fields = plain[1:].decode("utf-8", "surrogatepass").split("\0")
    else:
        fields = json.loads(plain[1:])
    return dict(zip(SECRET_FIELDS, fields, strict=True))


CHAIN_LABEL = b"egressguard audit chain v1"
MARK_LABEL = b"egressguard audit mark v1"


class EnvelopeSealer:
    """Batches sealed under data keys from a customer-managed key (`keys.envelope`).

    Each batch gets its data key from `writer_key(records=n)` (cached: a few us per
    batch, not per record) and stores the wrapped key once, as the batch header: it names
    the vault, key and version, so rotation never re-encrypts and a reader whose key is
    gone can say so (`CannotDecrypt`) instead of calling the record tampered. The chain
    MAC of a batch is keyed by a subkey of its own data key, so any gateway that can
    unwrap the header can verify it (no per-host key). Batches without a header were
    written under the local audit key and open with `legacy`.

    With `envelope=None` (no customer-managed key configured for this reader) only
    headerless batches open; a batch with a header is `CannotDecrypt`, never tampered.
    This is the one reader every audit query uses (`reader_of` wraps a bare `Sealer`).
    """

    def __init__(self, envelope: Any | None, legacy: Sealer | None = None) -> None:
        self.envelope = envelope
        self.legacy = legacy

    def batch(self, records: int) -> tuple[bytes, Any]:
        """(header, encrypt) for a batch of `records`; `SuspendedError` while suspended."""
        if self.envelope is None:
            raise ValueError("no customer-managed key to seal batches with")
        key = self.envelope.writer_key(records=records)
        return key.wrapped, key.encrypt

    def _key(self, header: bytes) -> Any:
        if self.envelope is None:
            from egressguard.keys.envelope import CannotDecrypt, Tampered
            from egressguard.keys.provider import KeyRequestError, WrappedKey
            try:
                kid = WrappedKey.from_bytes(header).kid
            except KeyRequestError as exc:
                raise Tampered(f"wrapped data key unreadable: {exc}") from None
            raise CannotDecrypt(kid, "no customer-managed key is configured here")
        return self.envelope.reader_key(header)

    def open(self, header: bytes | None, payload: bytes, clear: bytes) -> dict[str, Any]:
        """The sealed fields; `CannotDecrypt` (key unavailable) or `Tampered` (altered)."""
        from egressguard.keys.envelope import Tampered

        if header is None:
            opened = self.legacy.open(payload, clear) if self.legacy is not None else None
            if opened is None:
                raise Tampered("record does not open under the local audit key")
            return opened
        key = self._key(header)
        try:
            plain = key.decrypt(payload[:NONCE], payload[NONCE:], clear)
        except (InvalidTag, ValueError):
            raise Tampered("record does not open under its batch data key") from None
        return _fields(plain)

    def chain(self, header: bytes | None, prev: bytes, writer: str, seq: int,
              payloads: list[bytes]) -> bytes:
        """The batch MAC (as `Sealer.chain`), keyed by the batch's data key."""
        if header is None:
            return self._legacy().chain(prev, writer, seq, payloads)
        mac_key = self._key(header).subkey(CHAIN_LABEL)
        return _chain(mac_key, prev + hashlib.sha256(header).digest(), writer, seq,
                      payloads)

    def mark(self, header: bytes | None, label: str, *parts: bytes | str | int) -> bytes:
        """`Sealer.mark` (head and prune records) keyed by a subkey of the data key that
        `header` wraps, so that every gateway with access verifies it; the header is
        bound in. Without a header, the local audit key's mark."""
        if header is None:
            return self._legacy().mark(label, *parts)
        message = b"|".join(p if isinstance(p, bytes) else str(p).encode()
                            for p in (label, hashlib.sha256(header).digest(), *parts))
        return hmac.new(self._key(header).subkey(MARK_LABEL), message,
                        hashlib.sha256).digest()

    def current_header(self) -> bytes | None:
        """The header new marks use: the writer's data key, or None (local key)."""
        if self.envelope is None:
            return None
        return bytes(self.envelope.writer_key().wrapped)

    def _legacy(self) -> Sealer:
        if self.legacy is None:
            from egressguard.keys.envelope import Tampered
            raise Tampered("a batch without a key header and no local audit key")
        return self.legacy

    def verdict(self, header: bytes | None, payload: bytes, clear: bytes) -> str:
        """`ok`, `tampered`, or `cannot decrypt: key K version V unavailable (why)`, as
        `logs verify` reports a record."""
        from egressguard.keys.envelope import CannotDecrypt, Tampered

        try:
            self.open(header, payload, clear)
        except Tampered:
            return "tampered"
        except CannotDecrypt as exc:
            return str(exc)
        except Unavailable as exc:  # suspended: this reader's own access is gone
            return str(unavailable_as_cannot_decrypt(header, exc))
        return "ok"


def unavailable_as_cannot_decrypt(header: bytes | None, exc: Exception) -> Exception:
    """A reader's suspension, phrased as what it means for one batch: its key version
    cannot be used here (never evidence of tampering)."""
    from egressguard.keys.envelope import CannotDecrypt
    from egressguard.keys.provider import KeyRequestError, WrappedKey

    if header is None:
        return exc
    try:
        kid = WrappedKey.from_bytes(header).kid
    except KeyRequestError:
        kid = "?"
    return CannotDecrypt(kid, str(exc))


def reader_of(sealer: Sealer | EnvelopeSealer | None) -> EnvelopeSealer | None:
    """The one reader queries use: an `EnvelopeSealer` (a bare `Sealer` reads headerless
    batches only)."""
    if sealer is None or isinstance(sealer, EnvelopeSealer):
        return sealer
    return EnvelopeSealer(None, legacy=sealer)


def _chain(mac_key: bytes, prev: bytes, writer: str, seq: int,
           payloads: list[bytes]) -> bytes:
    digest = hashlib.sha256()
    for payload in payloads:
        digest.update(len(payload).to_bytes(4, "big"))
        digest.update(payload)
    message = b"|".join((prev, writer.encode(), str(seq).encode(),
                         str(len(payloads)).encode(), digest.digest()))
    return hmac.new(mac_key, message, hashlib.sha256).digest()


def associated(values: tuple[Any, ...]) -> bytes:
    """The clear columns of a record (in `CLEAR_FIELDS` order, Python types as written:
    str, int, float, bool, None), canonically, as AES-GCM associated data.

    marshal format version 2 is fixed (it has no object references, so equal values give
    equal bytes whatever their identity) and about 3x cheaper than `repr`."""
    return marshal.dumps(values, 2)


SECRET_FIELDS = ("client_address", "client_identity", "method", "path", "reason")
CLEAR_FIELDS = ("time", "cluster", "phase", "kind", "host", "port", "resolved_address",
                "protocol", "callout_type", "verdict", "permitted", "layer", "rule",
                "policy_version", "connection_id", "bytes_up", "bytes_down", "duration_s",
                "close_cause")

