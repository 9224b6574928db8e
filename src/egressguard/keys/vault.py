"""The built-in key vault: customer keys kept in the store, sealed under a master key.

Azure Key Vault semantics, embedded: keys (RSA 2048/3072/4096, AES-256) with versions,
enabled/disabled, soft delete with a retention period, purge protection (purge refused;
the key goes only when its retention ends), recover, and access policies granting `get`,
`wrapKey` and `unwrapKey` to identity names.

`KeyVault` is the management plane (it migrates the store and creates the vault);
`VaultClient` is the data plane one identity uses (a `KeyProvider`). Every data-plane call
reads the key's state and the identity's grant from the store, so a disable, delete or
revoke takes effect on the next call of every gateway sharing the store. Store failures
surface as `ProviderUnreachable`, so callers fail closed.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from egressguard.keys import schema
from egressguard.keys.provider import (
    PERMISSIONS,
    AccessDenied,
    KeyConflict,
    KeyDeleted,
    KeyDisabled,
    KeyInfo,
    KeyNotFound,
    KeyRequestError,
    ProviderUnreachable,
    PurgeRefused,
    UnwrapFailed,
    WrappedKey,
    check_data_key,
    check_key_name,
    check_key_spec,
)
from egressguard.store import db

URI_SCHEME = "vault://"
VAULT_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?")
_OAEP256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                        label=None)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def vault_uri(name: str) -> str:
    return f"{URI_SCHEME}{name}"


def parse_permissions(text: str | list[str] | tuple[str, ...]) -> frozenset[str]:
    """`get,wrapKey,unwrapKey` -> a set; unknown names are refused (case as Azure)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    wanted = {p.strip() for p in items if p.strip()}
    unknown = sorted(wanted - set(PERMISSIONS))
    if unknown or not wanted:
        raise KeyRequestError(f"unknown permission(s) {', '.join(unknown) or '(none)'}; "
                              f"expected a comma list of {', '.join(PERMISSIONS)}")
    return frozenset(wanted)


@dataclass(frozen=True)
class VaultProperties:
    name: str
    uri: str
    soft_delete: bool
    retention_days: int
    purge_protection: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vaultUri": self.uri, "enableSoftDelete": self.soft_delete,
                "softDeleteRetentionInDays": self.retention_days,
                "enablePurgeProtection": self.purge_protection}


class _Material:
    """Seals key material under the master key, bound to where it belongs."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise KeyRequestError("the master key must be 32 bytes")
        self._aead = AESGCM(master_key)

    def seal(self, where: str, material: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, material, where.encode())

    def open(self, where: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], where.encode())
        except InvalidTag:
            raise AccessDenied(f"key material of {where} does not open under this master "
                               "key (wrong EGRESSGUARD_MASTER_KEY?)") from None


def _generate(kty: str, size: int) -> tuple[bytes, bytes | None]:
    """(secret material, public half or None)."""
    if kty == "AES":
        return os.urandom(32), None
    private = rsa.generate_private_key(public_exponent=65537, key_size=size)
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return der, public


class _Base:
    """Shared reads of the vault's tables."""

    def __init__(self, engine: Engine, name: str, master_key: bytes) -> None:
        if not VAULT_NAME.fullmatch(name):
            raise KeyRequestError(f"invalid vault name {name[:110]!r}: 1-100 lower-case "
                                  "letters, digits and '-'")
        self.engine = engine
        self.name = name
        self.vault_uri = vault_uri(name)
        self._material = _Material(master_key)

    @contextmanager
    def _conn(self, write: bool = False) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            if isinstance(exc, IntegrityError):
                raise KeyConflict(f"conflicting change in vault {self.name!r}") from None
            raise ProviderUnreachable(f"vault {self.name!r}: store unreachable "
                                      f"({type(exc).__name__})") from None

    def _vault(self, conn: Connection) -> Any:
        row = conn.execute(select(schema.vaults).where(schema.vaults.c.name == self.name)).first()
        if row is None:
            raise KeyNotFound(f"vault {self.name!r} not found")
        return row

    def _key(self, conn: Connection, vault_id: int, name: str) -> Any:
        check_key_name(name)
        row = conn.execute(select(schema.keys).where(schema.keys.c.vault_id == vault_id,
                                                     schema.keys.c.name == name)).first()
        if row is None:
            raise KeyNotFound(f"key {name!r} not found in vault {self.name!r}", name)
        return row

    def _versions(self, conn: Connection, key_id: int) -> list[Any]:
        return list(conn.execute(select(schema.versions).where(
            schema.versions.c.key_id == key_id).order_by(schema.versions.c.id)))

    def _info(self, conn: Connection, vault: Any, key: Any) -> KeyInfo:
        versions = self._versions(conn, key.id)
        attributes: dict[str, Any] = {
            "recoveryLevel": ("Recoverable+Purgeable" if not vault.purge_protection
                              else "Recoverable") if vault.soft_delete else "Purgeable",
            "recoverableDays": vault.retention_days if vault.soft_delete else 0,
            "updatedAt": _aware(key.updated_at).isoformat()}  # type: ignore[union-attr]
        if key.deleted_at is not None:
            attributes["deletedAt"] = _aware(key.deleted_at).isoformat()  # type: ignore[union-attr]
            attributes["scheduledPurgeDate"] = _aware(key.purge_at).isoformat()  # type: ignore[union-attr]
        return KeyInfo(self.vault_uri, key.name, key.kty, key.size,
                       tuple(v.version for v in versions), bool(key.enabled),
                       _aware(key.created_at), attributes)

    def _where(self, key: str, version: str) -> str:
        return f"{self.vault_uri}/keys/{key}/{version}"


class VaultClient(_Base):
    """The data plane, acting as `identity` (a `KeyProvider`)."""

    def __init__(self, engine: Engine, name: str, master_key: bytes, identity: str) -> None:
        super().__init__(engine, name, master_key)
        self.identity = identity

    @classmethod
    def connect(cls, url: str, name: str, master_key: bytes, identity: str) -> VaultClient:
        """A client on its own engine; connects on first use (no migration)."""
        return cls(db.make_engine(url, pool_size=2), name, master_key, identity)

    def _allowed(self, conn: Connection, vault: Any, permission: str, key: str) -> None:
        row = conn.execute(select(schema.access.c.permissions).where(
            schema.access.c.vault_id == vault.id,
            schema.access.c.identity == self.identity)).first()
        granted = set(row.permissions.split(",")) if row else set()
        if permission not in granted:
            raise AccessDenied(f"identity {self.identity!r} lacks {permission} on vault "
                               f"{self.name!r}", key)

    def _usable(self, conn: Connection, permission: str, name: str) -> tuple[Any, Any]:
        vault = self._vault(conn)
        self._allowed(conn, vault, permission, name)
        key = self._key(conn, vault.id, name)
        if key.deleted_at is not None:
            raise KeyDeleted(f"key {name!r} is deleted (recoverable until "
                             f"{_aware(key.purge_at):%Y-%m-%d})", name)
        return vault, key

    def get_key(self, name: str) -> KeyInfo:
        with self._conn() as conn:
            vault, key = self._usable(conn, "get", name)
            return self._info(conn, vault, key)

    def _version_row(self, conn: Connection, key: Any, version: str | None) -> Any:
        rows = self._versions(conn, key.id)
        if version is None:
            return rows[-1]
        for row in rows:
            if row.version == version:
                return row
        raise KeyNotFound(f"key {key.name!r} has no version {version!r}", key.name, version)

    def _enabled(self, key: Any, version: str) -> None:
        if not key.enabled:
            raise KeyDisabled(f"key {key.name!r} is disabled", key.name, version)

    def wrap_key(self, name: str, data_key: bytes, version: str | None = None) -> WrappedKey:
        check_data_key(data_key)
        with self._conn() as conn:
            _vault, key = self._usable(conn, "wrapKey", name)
            row = self._version_row(conn, key, version)
            self._enabled(key, row.version)
            if key.kty == "RSA":
                public = serialization.load_der_public_key(row.public)
                assert isinstance(public, rsa.RSAPublicKey)
                return WrappedKey(self.vault_uri, name, row.version, "RSA-OAEP-256",
                                  public.encrypt(data_key, _OAEP256))
            kek = self._material.open(self._where(name, row.version), row.sealed)
            return WrappedKey(self.vault_uri, name, row.version, "A256KW",
                              aes_key_wrap(kek, data_key))

    def unwrap_key(self, wrapped: WrappedKey) -> bytes:
        if wrapped.vault_uri != self.vault_uri:
            raise UnwrapFailed(f"{wrapped.kid} was wrapped by another vault "
                               f"({wrapped.vault_uri}), not {self.vault_uri}")
        with self._conn() as conn:
            _vault, key = self._usable(conn, "unwrapKey", wrapped.key)
            row = self._version_row(conn, key, wrapped.version)
            self._enabled(key, row.version)
            material = self._material.open(self._where(key.name, row.version), row.sealed)
        expected = "RSA-OAEP-256" if key.kty == "RSA" else "A256KW"
        if wrapped.alg != expected:
            raise UnwrapFailed(f"{wrapped.kid}: algorithm {wrapped.alg} does not match the "
                               f"key ({expected})")
        try:
            if key.kty == "RSA":
                # The material opened under the master key's GCM tag, so it is the key
                # this vault generated: re-validating it would cost ~50 ms per unwrap.
                private = serialization.load_der_private_key(
                    material, password=None, unsafe_skip_rsa_key_validation=True)
                assert isinstance(private, rsa.RSAPrivateKey)
                data_key = private.decrypt(wrapped.ciphertext, _OAEP256)
            else:
                data_key = aes_key_unwrap(material, wrapped.ciphertext)
        except (ValueError, InvalidUnwrap):
            raise UnwrapFailed(f"{wrapped.kid} did not wrap this data key "
                               "(another key, or altered)") from None
        check_data_key(data_key)
        return data_key


class KeyVault(_Base):
    """The management plane of one vault in the store at `url` (created with these
    settings if absent and `create`; an existing vault keeps its own)."""

    def __init__(self, url: str, name: str = "default", *, master_key: bytes,
                 soft_delete: bool = True, retention_days: int = 90,
                 purge_protection: bool = True, create: bool = True) -> None:
        from egressguard.store.store import migrate

        if not (7 <= retention_days <= 90):
            raise KeyRequestError("softDeleteRetentionInDays must be 7-90")
        try:
            engine = db.make_engine(url)
            migrate(engine)
        except SQLAlchemyError as exc:
            raise ProviderUnreachable(f"vault {name!r}: store unreachable "
                                      f"({type(exc).__name__})") from None
        super().__init__(engine, name, master_key)
        self._master_key = master_key
        if not create:
            return
        try:
            with self._conn(write=True) as conn:
                conn.execute(insert(schema.vaults).values(
                    name=name, soft_delete=soft_delete, retention_days=retention_days,
                    purge_protection=purge_protection, created_at=_now()))
        except KeyConflict:
            pass  # the vault exists: its settings stand

    def close(self) -> None:
        self.engine.dispose()

    def client(self, identity: str) -> VaultClient:
        """The data plane as `identity`, sharing this vault's engine."""
        return VaultClient(self.engine, self.name, self._master_key, identity)

    def properties(self) -> VaultProperties:
        with self._conn() as conn:
            v = self._vault(conn)
            return VaultProperties(v.name, self.vault_uri, bool(v.soft_delete),
                                   v.retention_days, bool(v.purge_protection))

    def enable_purge_protection(self) -> VaultProperties:
        """Turn purge protection on (irreversible, as in Azure)."""
        with self._conn(write=True) as conn:
            vault = self._vault(conn)
            conn.execute(update(schema.vaults).where(schema.vaults.c.id == vault.id)
                         .values(purge_protection=True))
        return self.properties()

    # -- keys -----------------------------------------------------------------------

    def _add_version(self, conn: Connection, key_id: int, name: str, kty: str,
                     size: int) -> None:
        version = secrets.token_hex(16)
        material, public = _generate(kty, size)
        conn.execute(insert(schema.versions).values(
            key_id=key_id, version=version, public=public, created_at=_now(),
            sealed=self._material.seal(self._where(name, version), material)))

    def create_key(self, name: str, kty: str = "RSA", size: int = 2048) -> KeyInfo:
        check_key_name(name)
        check_key_spec(kty, size)
        with self._conn(write=True) as conn:
            vault = self._vault(conn)
            existing = conn.execute(select(schema.keys).where(
                schema.keys.c.vault_id == vault.id, schema.keys.c.name == name)).first()
            if existing is not None:
                state = "soft-deleted: recover or purge it" if existing.deleted_at else "exists"
                raise KeyConflict(f"key {name!r} {state}")
            now = _now()
            key_id = conn.execute(insert(schema.keys).values(
                vault_id=vault.id, name=name, kty=kty, size=size, enabled=True,
                created_at=now, updated_at=now)).inserted_primary_key[0]  # type: ignore[index]
            self._add_version(conn, key_id, name, kty, size)
            return self._info(conn, vault, self._key(conn, vault.id, name))

    def _live(self, conn: Connection, name: str) -> tuple[Any, Any]:
        vault = self._vault(conn)
        key = self._key(conn, vault.id, name)
        if key.deleted_at is not None:
            raise KeyDeleted(f"key {name!r} is deleted; recover it first", name)
        return vault, key

    def get_key(self, name: str, *, include_deleted: bool = False) -> KeyInfo:
        with self._conn() as conn:
            vault = self._vault(conn)
            key = self._key(conn, vault.id, name)
            if key.deleted_at is not None and not include_deleted:
                raise KeyDeleted(f"key {name!r} is deleted", name)
            return self._info(conn, vault, key)

    def list_keys(self, *, deleted: bool = False) -> list[KeyInfo]:
        with self._conn() as conn:
            vault = self._vault(conn)
            cond = (schema.keys.c.deleted_at.is_not(None) if deleted
                    else schema.keys.c.deleted_at.is_(None))
            rows = conn.execute(select(schema.keys).where(
                schema.keys.c.vault_id == vault.id, cond).order_by(schema.keys.c.name))
            return [self._info(conn, vault, r) for r in rows]

    def rotate_key(self, name: str) -> KeyInfo:
        with self._conn(write=True) as conn:
            vault, key = self._live(conn, name)
            self._add_version(conn, key.id, name, key.kty, key.size)
            conn.execute(update(schema.keys).where(schema.keys.c.id == key.id)
                         .values(updated_at=_now()))
            return self._info(conn, vault, self._key(conn, vault.id, name))

    def set_enabled(self, name: str, enabled: bool) -> KeyInfo:
        with self._conn(write=True) as conn:
            vault, key = self._live(conn, name)
            conn.execute(update(schema.keys).where(schema.keys.c.id == key.id)
                         .values(enabled=enabled, updated_at=_now()))
            return self._info(conn, vault, self._key(conn, vault.id, name))

    def delete_key(self, name: str) -> None:
        """Soft delete (recoverable for the retention period), or purge if the vault has no
        soft delete."""
        with self._conn(write=True) as conn:
            vault, key = self._live(conn, name)
            if not vault.soft_delete:
                self._purge(conn, key.id)
                return
            now = _now()
            conn.execute(update(schema.keys).where(schema.keys.c.id == key.id).values(
                deleted_at=now, purge_at=now + timedelta(days=vault.retention_days),
                updated_at=now))

    def recover_key(self, name: str) -> KeyInfo:
        with self._conn(write=True) as conn:
            vault = self._vault(conn)
            key = self._key(conn, vault.id, name)
            if key.deleted_at is None:
                raise KeyRequestError(f"key {name!r} is not deleted")
            conn.execute(update(schema.keys).where(schema.keys.c.id == key.id).values(
                deleted_at=None, purge_at=None, updated_at=_now()))
            return self._info(conn, vault, self._key(conn, vault.id, name))

    def purge_key(self, name: str) -> None:
        """Destroy a soft-deleted key for good; refused while purge protection is on."""
        with self._conn(write=True) as conn:
            vault = self._vault(conn)
            key = self._key(conn, vault.id, name)
            if key.deleted_at is None:
                raise KeyRequestError(f"key {name!r} is not deleted; delete it first")
            if vault.purge_protection:
                raise PurgeRefused(f"vault {self.name!r} has purge protection: key {name!r} "
                                   f"is purged only when its retention ends "
                                   f"({_aware(key.purge_at):%Y-%m-%d})")
            self._purge(conn, key.id)

    def purge_expired(self, now: datetime | None = None) -> list[str]:
        """Purge deleted keys whose retention has ended (purge protection allows this)."""
        now = now or _now()
        with self._conn(write=True) as conn:
            vault = self._vault(conn)
            rows = list(conn.execute(select(schema.keys).where(
                schema.keys.c.vault_id == vault.id, schema.keys.c.deleted_at.is_not(None))))
            gone = [r for r in rows if _aware(r.purge_at) <= now]  # type: ignore[operator]
            for row in gone:
                self._purge(conn, row.id)
            return [r.name for r in gone]

    @staticmethod
    def _purge(conn: Connection, key_id: int) -> None:
        conn.execute(delete(schema.versions).where(schema.versions.c.key_id == key_id))
        conn.execute(delete(schema.keys).where(schema.keys.c.id == key_id))

    # -- access policies --------------------------------------------------------------

    def access_policies(self) -> dict[str, frozenset[str]]:
        with self._conn() as conn:
            vault = self._vault(conn)
            rows = conn.execute(select(schema.access).where(schema.access.c.vault_id == vault.id)
                                .order_by(schema.access.c.identity))
            return {r.identity: frozenset(r.permissions.split(",")) - {""} for r in rows}

    def _set_access(self, identity: str, change: Any) -> frozenset[str]:
        if not identity.strip() or len(identity) > 200:
            raise KeyRequestError("an identity name is 1-200 characters")
        with self._conn(write=True) as conn:
            vault = self._vault(conn)
            row = conn.execute(select(schema.access).where(
                schema.access.c.vault_id == vault.id,
                schema.access.c.identity == identity)).first()
            old = frozenset(row.permissions.split(",")) - {""} if row else frozenset()
            new = frozenset(change(old))
            text = ",".join(p for p in PERMISSIONS if p in new)
            if row is None:
                conn.execute(insert(schema.access).values(vault_id=vault.id, identity=identity,
                                                          permissions=text))
            else:
                conn.execute(update(schema.access).where(schema.access.c.id == row.id)
                             .values(permissions=text))
            return new

    def grant(self, identity: str, permissions: str | list[str]) -> frozenset[str]:
        wanted = parse_permissions(permissions)
        return self._set_access(identity, lambda old: old | wanted)

    def revoke(self, identity: str, permissions: str | list[str]) -> frozenset[str]:
        wanted = parse_permissions(permissions)
        return self._set_access(identity, lambda old: old - wanted)
