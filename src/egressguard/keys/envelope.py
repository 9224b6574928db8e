"""Envelope encryption under a customer-managed key, with rotation and revocation.

Data is sealed with AES-256-GCM under a data key; the data key is wrapped by the customer
key (a `KeyProvider`) and the wrapped blob, which names vault, key and version, travels
with the data (once per record in `seal`, or once per batch for a batch sealer that calls
`writer_key()` and stores `DataKey.wrapped` in its batch header). Unwrapped data keys are
cached, so the provider is called once per data key, not once per record.

Rotation: a new key version (when `key_version` is unset, the latest is re-read every
`check_interval` seconds) or a new key URI (`configure`) wraps the data keys minted from
then on; blobs wrapped by older versions or vaults keep opening, nothing is re-encrypted.

Revocation: every `check_interval` seconds (`start()`), or on `check()`, the envelope asks
the provider for the key and wraps and unwraps a probe. Disabled, deleted, access revoked
or unreachable -> `Suspended` with the reason: data keys and caches are dropped (the
bytearrays this module owns are zeroed) and `seal`/`open` refuse, failing closed. When the
probe succeeds again -> `Running`. Each transition calls `on_state_change` with a
`StateChange` whose `record()` is plaintext: it needs no data key to be written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from egressguard.errors import EgressguardError, Unavailable
from egressguard.keys.provider import (
    KeyDisabled,
    KeyNotFound,
    KeyProvider,
    KeyProviderError,
    KeyRequestError,
    KeyUnavailable,
    UnwrapFailed,
    WrappedKey,
)

log = logging.getLogger(__name__)
RUNNING = "Running"
SUSPENDED = "Suspended"
_MAGIC = b"EGE1"
NONCE = 12
MAX_BLOB = 16 * 1024 * 1024


class EnvelopeError(EgressguardError):
    """Base of the envelope's refusals."""


class SuspendedError(EnvelopeError, Unavailable):
    """The customer key is unavailable; nothing is sealed or opened until it returns."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"suspended: {reason}")
        self.reason = reason


class CannotDecrypt(EnvelopeError, Unavailable):
    """The data key does not unwrap: its key version is unavailable or is not the one that
    wrapped it. Not evidence of tampering with the record."""

    def __init__(self, kid: str, reason: str) -> None:
        super().__init__(f"cannot decrypt: key {kid} unavailable ({reason})")
        self.kid = kid
        self.reason = reason


class Tampered(EnvelopeError):
    """The data key unwrapped but the sealed data does not open: it was altered."""


@dataclass(frozen=True)
class StateChange:
    """A transition of the envelope; `record()` is a system event in clear text."""

    state: str
    previous: str
    reason: str
    kid: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def record(self) -> dict[str, Any]:
        return {"kind": "system", "event": "key-state", "state": self.state,
                "previous": self.previous, "reason": self.reason, "key": self.kid,
                "at": self.at.isoformat()}


class DataKey:
    """One AES-256-GCM data key in memory, with the wrapped blob that stores it."""

    def __init__(self, material: bytearray, wrapped: WrappedKey) -> None:
        self._material = material
        self._aead = AESGCM(bytes(material))
        # For a sealer's inline loop: encrypt(nonce, data, aad) / decrypt(...), raw AES-GCM;
        # the caller owns nonce uniqueness.
        self.encrypt = self._aead.encrypt
        self.decrypt = self._aead.decrypt
        self.ref = wrapped
        self.wrapped = wrapped.to_bytes()
        self.key_id = hashlib.sha256(self.wrapped).digest()[:16]
        self.uses = 0
        self.born = time.monotonic()
        self._subkeys: dict[bytes, bytearray] = {}

    def subkey(self, label: bytes) -> bytes:
        """A key derived from this data key for another purpose (e.g. a batch MAC),
        HKDF-SHA256 with `label` as info; cached, wiped with the data key."""
        found = self._subkeys.get(label)
        if found is None:
            found = bytearray(HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                                   info=label).derive(bytes(self._material)))
            self._subkeys[label] = found
        return bytes(found)

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """nonce || ciphertext+tag (random 96-bit nonces; the envelope retires a data key
        long before nonce collisions matter)."""
        self.uses += 1  # approximate under concurrent sealers; bounds rotation only
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes = b"") -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], aad)
        except InvalidTag:
            raise Tampered("sealed data does not open under its data key (altered)") from None

    def wipe(self) -> None:
        for buf in (self._material, *self._subkeys.values()):
            buf[:] = bytes(len(buf))
        self._subkeys.clear()
        self._aead = self.encrypt = self.decrypt = None  # type: ignore[assignment]


def _frame(wrapped: bytes, sealed: bytes) -> bytes:
    return _MAGIC + struct.pack(">H", len(wrapped)) + wrapped + sealed


def split_blob(blob: bytes) -> tuple[bytes, bytes]:
    """(wrapped data key, nonce || ciphertext) of a `seal` blob; bounded and checked. A
    blob that is not one was altered: `Tampered`."""
    if len(blob) > MAX_BLOB or blob[:4] != _MAGIC or len(blob) < 6:
        raise Tampered("not an envelope blob")
    (size,) = struct.unpack(">H", blob[4:6])
    if len(blob) < 6 + size + NONCE + 16:
        raise Tampered("truncated envelope blob")
    return blob[6:6 + size], blob[6 + size:]


class Envelope:
    """Seals and opens data under one customer key; tracks its availability."""

    def __init__(self, provider: KeyProvider, key_name: str, key_version: str | None = None,
                 *, check_interval: float = 5.0, records_per_data_key: int = 1_000_000,
                 data_key_ttl: float = 3600.0, cache_size: int = 1024,
                 on_state_change: Callable[[StateChange], None] | None = None,
                 refresh: Callable[[Envelope], None] | None = None) -> None:
        self.check_interval = check_interval
        # Called before each periodic check: lets the owner follow a changed key URI
        # (`configure`) before the probe (`keys.runtime.ClusterKey`).
        self.refresh = refresh
        self.records_per_data_key = records_per_data_key
        self.data_key_ttl = data_key_ttl
        self.cache_size = cache_size
        self.on_state_change = on_state_change
        self._lock = threading.RLock()
        self._providers: dict[str, KeyProvider] = {}
        self._writer: DataKey | None = None
        self._cache: OrderedDict[bytes, DataKey] = OrderedDict()
        self._state = SUSPENDED
        self._reason = "key not checked yet"
        self._version: str | None = None  # the version new data keys are wrapped with
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.configure(provider, key_name, key_version)

    # -- configuration and state --------------------------------------------------------

    def configure(self, provider: KeyProvider, key_name: str,
                  key_version: str | None = None) -> None:
        """Use this key for new data keys (a new key URI, name or pinned version); data
        wrapped by earlier keys stays readable through their providers."""
        with self._lock:
            self._providers[provider.vault_uri] = provider
            self.provider = provider
            self.key_name = key_name
            self.key_version = key_version
            self._version = key_version
            self._retire_writer()

    @property
    def state(self) -> str:
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def kid(self) -> str:
        version = self._version or "latest"
        return f"{self.provider.vault_uri.rstrip('/')}/keys/{self.key_name}/{version}"

    def start(self) -> Envelope:
        """Check now, then every `check_interval` seconds in a daemon thread."""
        self.check()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="envelope-check",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.check_interval + 5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.check_interval):
            try:
                if self.refresh is not None:
                    self.refresh(self)
                self.check()
            except Exception:  # never let the checker die: the next round retries
                log.exception("key check failed")

    def check(self) -> str:
        """Probe the key once (get, wrap, unwrap) and move to Running or Suspended."""
        with self._lock:
            provider, name, pinned = self.provider, self.key_name, self.key_version
        try:
            info = provider.get_key(name)
            version = pinned or info.latest
            if not info.enabled:
                raise KeyDisabled(f"key {name!r} is disabled", name, version)
            if version not in info.versions:
                raise KeyNotFound(f"key {name!r} has no version {version!r}", name, version)
            probe = os.urandom(32)
            if provider.unwrap_key(provider.wrap_key(name, probe, version)) != probe:
                raise UnwrapFailed("probe did not round-trip")
        except KeyProviderError as exc:  # fail closed on any refusal, not only revocation
            reason = getattr(exc, "reason", "key error")
            self._transition(SUSPENDED, f"{reason}: {exc}")
            return self._state
        except Exception as exc:
            self._transition(SUSPENDED, f"key check failed: {type(exc).__name__}")
            return self._state
        with self._lock:
            if provider is self.provider and version != self._version:
                self._version = version  # a newer latest: new data keys use it
                self._retire_writer()
        self._transition(RUNNING, f"key {info.kid(version)} available")
        return self._state

    def _transition(self, state: str, reason: str) -> None:
        with self._lock:
            previous = self._state
            self._reason = reason
            if state == previous:
                return
            self._state = state
            if state == SUSPENDED:
                self._wipe()
            change = StateChange(state, previous, reason, self.kid)
        if self.on_state_change is not None:
            try:
                self.on_state_change(change)
            except Exception:
                log.exception("state-change callback failed")

    def _retire_writer(self) -> None:
        self._writer = None  # stays in the read cache: data sealed with it must open

    def _wipe(self) -> None:
        for key in self._cache.values():
            key.wipe()
        if self._writer is not None:
            self._writer.wipe()
        self._cache.clear()
        self._writer = None

    def _refuse_if_suspended(self) -> None:
        if self._state != RUNNING:
            raise SuspendedError(self._reason)

    # -- data keys ------------------------------------------------------------------------

    def writer_key(self, records: int = 0) -> DataKey:
        """The data key to seal with now (minted and wrapped when there is none, it is
        used up or old, or the key version changed). Cheap: cached between calls. A batch
        sealer that encrypts inline passes the number of `records` it will seal."""
        with self._lock:
            self._refuse_if_suspended()
            writer = self._writer
            if (writer is not None
                    and writer.uses + max(records, 1) <= self.records_per_data_key
                    and time.monotonic() - writer.born < self.data_key_ttl):
                writer.uses += records
                return writer
            material = bytearray(os.urandom(32))
            try:
                wrapped = self.provider.wrap_key(self.key_name, bytes(material),
                                                 self._version)
            except KeyUnavailable as exc:
                material[:] = bytes(32)
                self._transition(SUSPENDED, f"{exc.reason}: {exc}")
                raise SuspendedError(self._reason) from None
            writer = DataKey(material, wrapped)
            writer.uses = records
            self._writer = writer
            self._remember(writer)
            return writer

    def _remember(self, key: DataKey) -> None:
        self._cache[key.wrapped] = key
        self._cache.move_to_end(key.wrapped)
        while len(self._cache) > self.cache_size:
            _, old = self._cache.popitem(last=False)
            if old is not self._writer:
                old.wipe()

    def reader_key(self, wrapped: bytes) -> DataKey:
        """The data key a stored wrapped blob holds (unwrapped once, then cached).
        `CannotDecrypt` names the key version when it does not unwrap."""
        with self._lock:
            self._refuse_if_suspended()
            cached = self._cache.get(wrapped)
            if cached is not None:
                self._cache.move_to_end(wrapped)
                return cached
            try:
                ref = WrappedKey.from_bytes(wrapped)
            except KeyRequestError as exc:  # the header itself was altered
                raise Tampered(f"wrapped data key unreadable: {exc}") from None
            provider = self._providers.get(ref.vault_uri)
            if provider is None:
                raise CannotDecrypt(ref.kid, f"vault {ref.vault_uri} is not configured")
            try:
                material = bytearray(provider.unwrap_key(ref))
            except KeyUnavailable as exc:
                raise CannotDecrypt(ref.kid, exc.reason) from None
            except UnwrapFailed:
                raise CannotDecrypt(ref.kid, "wrapped by another key, or altered") from None
            key = DataKey(material, ref)
            self._remember(key)
            return key

    # -- whole blobs ----------------------------------------------------------------------

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """A self-contained blob: wrapped data key, nonce, ciphertext."""
        key = self.writer_key()
        return _frame(key.wrapped, key.seal(plaintext, aad))

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        """The plaintext; `CannotDecrypt` if its key is unavailable, `Tampered` if the
        data was altered, `SuspendedError` while suspended."""
        wrapped, sealed = split_blob(blob)
        return self.reader_key(wrapped).open(sealed, aad)

    def blob_kid(self, blob: bytes) -> str:
        """The key version that wrapped a blob's data key (no key needed)."""
        return WrappedKey.from_bytes(split_blob(blob)[0]).kid
