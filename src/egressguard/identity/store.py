"""The identities table: create (the secret is returned once), list, show, rotate,
revoke, and `load` for the gateway's directory. Names follow the policy's name rules.

An identity's metadata (description and methods: SPIFFE IDs, CNs, JWT subjects) is
sealed at rest under the customer-managed key of the store's bootstrap cluster
(`default`) when it names one, as policy versions are under their cluster's key; the
proxy secret is only ever stored as its scrypt hash. Identities written before that
cluster named a key are sealed when the key is set (`keys.clusterkeys.apply`) and by
every identity write after it (`reseal`), so none stays in clear."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import not_, or_, select
from sqlalchemy.orm import Session

from egressguard.identity.model import StoredIdentity
from egressguard.identity.secrets import hash_secret, new_secret
from egressguard.policy.model import MAX_NAME
from egressguard.store.schema import IdentityRow
from egressguard.store.sealing import PREFIX, identity_aad, is_sealed, named_key
from egressguard.store.store import DEFAULT_CLUSTER, Exists, Invalid, NotFound, Store

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SPIFFE = re.compile(r"spiffe://[a-z0-9._-]+(/[^?#\s]*)?")
_MAX_CLAIMS = 64
_SEALED = ("description", "methods")


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _check_name(name: str) -> str:
    if not 0 < len(name) <= MAX_NAME or not _NAME.fullmatch(name):
        raise Invalid(f"identity name {name!r} may contain only letters, digits, '_', '.' "
                      f"and '-' (at most {MAX_NAME}), starting with a letter, digit or '_'",
                      "name")
    return name


def _claims(spiffe_ids: list[str], common_names: list[str],
            jwt_subjects: list[str]) -> dict[str, list[str]]:
    for uri in spiffe_ids:
        if len(uri) > 2048 or not _SPIFFE.fullmatch(uri):
            raise Invalid(f"{uri!r} is not a SPIFFE ID (spiffe://trust-domain/path)",
                          "spiffe_ids")
    for kind, values in (("common name", common_names), ("JWT subject", jwt_subjects)):
        for value in values:
            if not 0 < len(value) <= 512 or not value.isprintable():
                raise Invalid(f"{kind} {value[:80]!r}: 1-512 printable characters")
    if max(len(spiffe_ids), len(common_names), len(jwt_subjects)) > _MAX_CLAIMS:
        raise Invalid(f"at most {_MAX_CLAIMS} values per method")
    return {"spiffe_ids": spiffe_ids, "common_names": common_names,
            "jwt_subjects": jwt_subjects}


def _value(store: Store, row: IdentityRow) -> StoredIdentity:
    def opened(field: str, stored: str) -> str:
        return store.open_field(DEFAULT_CLUSTER, stored, identity_aad(row.name, field),
                                f"identity {row.name}")

    methods: dict[str, Any] = json.loads(opened("methods", row.methods or "{}"))
    return StoredIdentity(
        name=row.name, description=opened("description", row.description or ""),
        enabled=row.enabled,
        secret_hash=row.secret_hash, expires_at=_aware(row.expires_at),
        revoked_at=_aware(row.revoked_at), created_at=_aware(row.created_at),
        spiffe_ids=tuple(methods.get("spiffe_ids", ())),
        common_names=tuple(methods.get("common_names", ())),
        jwt_subjects=tuple(methods.get("jwt_subjects", ())),
        updated_at=_aware(row.updated_at))


class IdentityStore:
    """Identities in the control-plane store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _session(self, write: bool = False) -> Session:
        conn = self.store.engine.connect()
        if write:
            conn.execution_options(sqlite_immediate=True)
        return Session(bind=conn, expire_on_commit=False)

    def _row(self, s: Session, name: str) -> IdentityRow:
        row = s.scalar(select(IdentityRow).where(IdentityRow.name == name))
        if row is None:
            raise NotFound(f"identity {name!r} not found",
                           hint="`egressguard identity list` shows the identities")
        return row

    def create(self, name: str, principal: str, *, description: str = "",
               lifetime: float | None = None, secret: bool = True,
               spiffe_ids: list[str] | None = None, common_names: list[str] | None = None,
               jwt_subjects: list[str] | None = None) -> tuple[str | None, StoredIdentity]:
        """A new identity and its proxy secret (None with `secret=False`), shown once."""
        _check_name(name)
        methods = _claims(spiffe_ids or [], common_names or [], jwt_subjects or [])
        if len(description) > 1024:
            raise Invalid("description: at most 1024 characters", "description")
        now = datetime.now(UTC)
        issued = new_secret() if secret else None
        with self._session(write=True) as s, s.begin():
            if s.scalar(select(IdentityRow.id).where(IdentityRow.name == name)) is not None:
                raise Exists(f"identity {name!r} already exists",
                             hint=f"`egressguard identity rotate {name}` issues a new secret")
            def sealed(field: str, text: str) -> str:
                return self.store.seal_field(s, DEFAULT_CLUSTER, text,
                                             identity_aad(name, field), f"identity {name}")

            row = IdentityRow(
                name=name, description=sealed("description", description), enabled=True,
                secret_hash=hash_secret(issued) if issued else None,
                methods=sealed("methods", json.dumps(methods)), created_by=principal,
                created_at=now,
                updated_at=now,
                expires_at=now + timedelta(seconds=lifetime) if lifetime else None)
            s.add(row)
            s.flush()
            self._reseal(s)
            return issued, _value(self.store, row)

    def reseal(self) -> int:
        """Seal the metadata of identities written in clear before the bootstrap cluster
        named a key (nothing while it names none); how many were sealed now. Refused
        (StoreUnavailable) when the key cannot be used here: nothing is half done."""
        with self._session(write=True) as s, s.begin():
            return self._reseal(s)

    def _reseal(self, s: Session) -> int:
        """`reseal` inside the caller's write transaction (every identity write runs it:
        one key lookup, and one query while some row is still in clear). The update
        time is left alone: the identity itself did not change."""
        if named_key(s.connection(), DEFAULT_CLUSTER) is None:
            return 0
        clear = s.scalars(select(IdentityRow).where(or_(*(
            or_(column.is_(None), not_(column.startswith(PREFIX)))
            for column in (IdentityRow.description, IdentityRow.methods))))).all()
        for row in clear:
            for field in _SEALED:
                stored = getattr(row, field) or ("{}" if field == "methods" else "")
                if not is_sealed(stored):
                    setattr(row, field, self.store.seal_field(
                        s, DEFAULT_CLUSTER, stored, identity_aad(row.name, field),
                        f"identity {row.name}"))
        return len(clear)

    def list(self, *, include_revoked: bool = True) -> list[StoredIdentity]:
        with self._session() as s:
            rows = s.scalars(select(IdentityRow).order_by(IdentityRow.name)).all()
            found = [_value(self.store, r) for r in rows]
        return [i for i in found if include_revoked or i.revoked_at is None]

    def show(self, name: str) -> StoredIdentity:
        with self._session() as s:
            return _value(self.store, self._row(s, name))

    def rotate(self, name: str, *, lifetime: float | None = None) -> tuple[str, StoredIdentity]:
        """A new secret for `name` (the old one stops working at once); a revoked
        identity comes back to life only through `rotate`."""
        now = datetime.now(UTC)
        issued = new_secret()
        with self._session(write=True) as s, s.begin():
            row = self._row(s, name)
            row.secret_hash = hash_secret(issued)
            row.revoked_at = None
            row.updated_at = now
            if lifetime:
                row.expires_at = now + timedelta(seconds=lifetime)
            self._reseal(s)
            return issued, _value(self.store, row)

    def revoke(self, name: str) -> StoredIdentity:
        """Revoke: the secret is erased and no method of the identity authenticates
        (gateways following the store refuse it within a second)."""
        now = datetime.now(UTC)
        with self._session(write=True) as s, s.begin():
            row = self._row(s, name)
            row.secret_hash = None
            row.revoked_at = row.revoked_at or now
            row.updated_at = now
            self._reseal(s)
            return _value(self.store, row)

    def set_enabled(self, name: str, enabled: bool) -> StoredIdentity:
        with self._session(write=True) as s, s.begin():
            row = self._row(s, name)
            row.enabled = enabled
            row.updated_at = datetime.now(UTC)
            self._reseal(s)
            return _value(self.store, row)

    def load(self) -> tuple[StoredIdentity, ...]:
        """Every identity, for a gateway's directory."""
        return tuple(self.list())

    def fingerprint(self) -> tuple[tuple[str, datetime | None], ...]:
        """What changes whenever any identity does (cheap to poll)."""
        with self._session() as s:
            return tuple((n, _aware(u)) for n, u in s.execute(
                select(IdentityRow.name, IdentityRow.updated_at).order_by(IdentityRow.name)))
