"""The key provider interface: what egressguard asks of a customer-managed key.

A provider holds key-encryption keys (RSA 2048/3072/4096 or AES-256) it never hands out;
egressguard asks it to wrap and unwrap AES-256 data keys. Every wrapped blob names the
vault, key and version that wrapped it, so a rotated key keeps opening old blobs and a
reader can say "cannot decrypt: key K version V unavailable" instead of "tampered".

One exception tree: `KeyUnavailable` (disabled, deleted, access denied, provider
unreachable) is what revocation detection reacts to; `UnwrapFailed` means the blob was not
wrapped by that key version (or was altered); `KeyRequestError` is bad input.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from egressguard.errors import Denied, EgressguardError, InputError, Unavailable

DATA_KEY_BYTES = 32
RSA_SIZES = (2048, 3072, 4096)
KEY_TYPES = ("RSA", "AES")
PERMISSIONS = ("get", "wrapKey", "unwrapKey")
# Wrapping algorithms, named as JOSE/Azure Key Vault name them.
ALGORITHMS = ("RSA-OAEP-256", "RSA-OAEP", "A256KW", "A256KWP")
_MAGIC = b"EGWK"
_FORMAT = 1
MAX_WRAPPED = 4096  # a 4096-bit RSA ciphertext is 512 bytes; anything larger is garbage


class KeyProviderError(EgressguardError):
    """Base of every refusal by a key provider."""


class KeyRequestError(KeyProviderError, InputError):
    """A request the provider refuses as malformed (bad name, size, type, blob)."""


class KeyConflict(KeyProviderError, InputError):
    """The key exists already (possibly soft-deleted, holding the name until purged)."""


class PurgeRefused(KeyProviderError, Denied):
    """Purge of a key while the vault's purge protection is on."""


class UnwrapFailed(KeyProviderError):
    """The blob does not open under the key version it names: a different key wrapped it,
    or it was altered. Not an availability problem."""


class KeyUnavailable(KeyProviderError, Unavailable):
    """The key cannot be used now; `reason` says why in one line."""

    reason = "unavailable"

    def __init__(self, message: str, key: str = "", version: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.version = version


class KeyNotFound(KeyUnavailable):
    reason = "not found"


class KeyDisabled(KeyUnavailable):
    reason = "disabled"


class KeyDeleted(KeyUnavailable):
    reason = "deleted"


class AccessDenied(KeyUnavailable):
    reason = "access denied"


class ProviderUnreachable(KeyUnavailable):
    reason = "provider unreachable"


@dataclass(frozen=True)
class KeyInfo:
    """What `get_key` answers: versions oldest first, the newest is `latest`."""

    vault_uri: str
    name: str
    kty: str
    size: int
    versions: tuple[str, ...]
    enabled: bool
    created_at: datetime | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def latest(self) -> str:
        return self.versions[-1]

    def kid(self, version: str | None = None) -> str:
        return f"{self.vault_uri.rstrip('/')}/keys/{self.name}/{version or self.latest}"

    def as_dict(self) -> dict[str, Any]:
        return {"vaultUri": self.vault_uri, "name": self.name, "kty": self.kty,
                "size": self.size, "versions": list(self.versions), "latest": self.latest,
                "enabled": self.enabled, "kid": self.kid(),
                "createdAt": self.created_at.isoformat() if self.created_at else None,
                **dict(self.attributes)}


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by one version of one key; serialises to a self-describing blob."""

    vault_uri: str
    key: str
    version: str
    alg: str
    ciphertext: bytes

    @property
    def kid(self) -> str:
        return f"{self.vault_uri.rstrip('/')}/keys/{self.key}/{self.version}"

    def to_bytes(self) -> bytes:
        parts = [p.encode() for p in (self.vault_uri, self.key, self.version, self.alg)]
        out = bytearray(_MAGIC + bytes([_FORMAT]))
        for part in [*parts, self.ciphertext]:
            out += struct.pack(">H", len(part)) + part
        return bytes(out)

    @classmethod
    def from_bytes(cls, blob: bytes) -> WrappedKey:
        """Parse a blob; `KeyRequestError` for anything that is not one (bounded)."""
        if len(blob) > 5 + 5 * 2 + 4 * 1024 + MAX_WRAPPED or blob[:4] != _MAGIC:
            raise KeyRequestError("not a wrapped data key")
        if blob[4:5] != bytes([_FORMAT]):
            raise KeyRequestError(f"unknown wrapped-key format {blob[4:5].hex()}")
        fields: list[bytes] = []
        pos = 5
        for _ in range(5):
            if pos + 2 > len(blob):
                raise KeyRequestError("truncated wrapped data key")
            (size,) = struct.unpack(">H", blob[pos:pos + 2])
            pos += 2
            if pos + size > len(blob):
                raise KeyRequestError("truncated wrapped data key")
            fields.append(blob[pos:pos + size])
            pos += size
        if pos != len(blob):
            raise KeyRequestError("trailing bytes after wrapped data key")
        try:
            uri, key, version, alg = (f.decode() for f in fields[:4])
        except UnicodeDecodeError:
            raise KeyRequestError("wrapped data key header is not UTF-8") from None
        if alg not in ALGORITHMS:
            raise KeyRequestError(f"unknown wrapping algorithm {alg!r}")
        return cls(uri, key, version, alg, fields[4])


@runtime_checkable
class KeyProvider(Protocol):
    """The data plane every provider offers, acting as one identity."""

    @property
    def vault_uri(self) -> str: ...

    def get_key(self, name: str) -> KeyInfo:
        """The key's versions and state. Raises `KeyUnavailable` (not found, deleted,
        access denied, unreachable); a disabled key is answered with `enabled=False`."""
        ...

    def wrap_key(self, name: str, data_key: bytes, version: str | None = None) -> WrappedKey:
        """Wrap a 32-byte data key with `version` (default the latest)."""
        ...

    def unwrap_key(self, wrapped: WrappedKey) -> bytes:
        """The data key; `UnwrapFailed` if the named version did not wrap it."""
        ...


@runtime_checkable
class KeyAdmin(Protocol):
    """The management plane both providers offer (the contract tests drive it)."""

    def create_key(self, name: str, kty: str = "RSA", size: int = 2048) -> KeyInfo: ...

    def rotate_key(self, name: str) -> KeyInfo: ...

    def set_enabled(self, name: str, enabled: bool) -> KeyInfo: ...

    def delete_key(self, name: str) -> None: ...


def check_key_spec(kty: str, size: int) -> None:
    """Refuse key types and sizes outside RSA 2048/3072/4096 and AES-256."""
    if kty == "RSA" and size in RSA_SIZES:
        return
    if kty == "AES" and size == 256:
        return
    raise KeyRequestError(f"unsupported key {kty} {size}: expected RSA 2048, 3072 or 4096, "
                          "or AES 256")


def check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_BYTES:
        raise KeyRequestError(f"a data key is {DATA_KEY_BYTES} bytes, got {len(data_key)}")


def check_key_name(name: str) -> None:
    """Key names as Azure Key Vault allows: 1-127 letters, digits and '-'."""
    if not (0 < len(name) <= 127) or not all(c.isascii() and (c.isalnum() or c == "-")
                                               for c in name):
        raise KeyRequestError(f"invalid key name {name[:130]!r}: 1-127 letters, digits, '-'")
