"""The control-plane store: clusters with append-only policy versions, API tokens and
dashboard sessions.

One `Store` wraps one SQLAlchemy engine (SQLite in WAL mode, or PostgreSQL through
psycopg 3). Opening a store runs its Alembic migrations and creates the `default` cluster
with the default (restricted, deny-all) policy. Every write of a policy is checked by
compiling it first, so the store never holds a policy the gateway would refuse; after the
commit, feeds in this process learn of it at once (`bus`) and other processes through
PostgreSQL NOTIFY or SQLite polling (`egressguard.control.runtime`).
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeout
from sqlalchemy.orm import Session

from egressguard.catalog import references
from egressguard.catalog.compile import snapshot_for
from egressguard.engine import CompileError
from egressguard.engine.holder import loading
from egressguard.errors import EgressguardError, InputError, Unavailable
from egressguard.policy import (
    Policy,
    PolicyError,
    dump_policy,
    dump_policy_json,
    load_policy_text,
)
from egressguard.policy.builtins import DENY_ALL
from egressguard.store import bus, db, sealing
from egressguard.store.render import stored_texts
from egressguard.store.schema import (
    CeilingRow,
    ClusterRow,
    GrantRow,
    SessionRow,
    TokenRow,
    VersionRow,
)
from egressguard.store.tokens import (
    CLUSTER_NAME,
    DEFAULT_TOKEN_LIFETIME,
    MAX_SECRET,
    MAX_TOKEN_LIFETIME,
    SESSION_LIFETIME,
    WIDE_ROLES,
    Principal,
    Refusal,
    expired_message,
    hash_token,
    new_session_id,
    new_token,
    parse_grants,
)
from egressguard.store.urls import bus_key, normalize_url

NOTIFY_CHANNEL = "egressguard_policy"
_JSON_AAD = b"|json"  # the JSON form of a version is sealed apart from its text
DEFAULT_CLUSTER = "default"
_MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 7217001  # PostgreSQL advisory lock for concurrent migrations of the store


class StoreError(EgressguardError):
    """Base of the store's refusals (mapped to 4xx by the API, exit 2 by the CLI)."""


class NotFound(StoreError, InputError):
    pass


class Exists(StoreError, InputError):
    """A cluster that is created but already exists."""


class StoreUnavailable(StoreError, Unavailable):
    """The database cannot be reached now; retrying later may succeed (HTTP 503)."""


class Invalid(StoreError, InputError):
    """A policy that does not validate or compile; `field` names where, if known."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class Refused(Invalid):
    """A policy write refused by the cluster's assertions or ceiling (HTTP 422, exit 1);
    `problems` are the lines that say why (failing assertions, `counterexample: ...`)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("policy refused:\n" + "\n".join(problems), "policy")


@dataclass(frozen=True)
class Ceiling:
    cluster: str
    policy: Policy
    text: str
    strict: bool
    principal: str
    set_at: datetime

    def meta(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "strict": self.strict, "principal": self.principal,
                "set_at": self.set_at.isoformat()}


def admit(policy: Policy, ceiling: Policy | None, strict: bool = False) -> None:
    """The gate every version write passes: raise `Refused` when an assertion of `policy`
    fails or `policy` may allow something `ceiling` does not (or, `strict`, when that
    cannot be proved)."""
    from egressguard.analysis.assertions import AssertionSyntaxError, failures
    from egressguard.analysis.contain import contains

    refs = references()
    try:
        problems = [o.line() for o in failures(policy, snapshot_for(policy, refs))]
    except AssertionSyntaxError as exc:
        problems = [str(exc)]
    if ceiling is not None:
        answer = contains(policy, ceiling, refs)
        if answer.refuses(strict):
            problems.extend(answer.message().splitlines())
    if problems:
        raise Refused(problems)


@dataclass(frozen=True)
class Version:
    """One immutable policy version of a cluster."""

    cluster: str
    number: int
    policy: Policy
    text: str
    principal: str
    created_at: datetime
    summary: str

    def meta(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "version": self.number, "principal": self.principal,
                "created_at": self.created_at.isoformat(), "summary": self.summary}


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: str
    bootstrap: bool
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    grants: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role,
                "grants": dict(self.grants),
                "bootstrap": self.bootstrap, "created_by": self.created_by,
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "expires_at": self.expires_at.isoformat() if self.expires_at else None}


def default_policy() -> Policy:
    """What a new cluster starts with: `DENY_ALL`, the one shipped default (the
    commented `gateway/default_policy.yaml` says the same, and a test holds it to it)."""
    return DENY_ALL


def check_policy(policy: Policy) -> None:
    """Compile `policy` as every enforcement point does (`snapshot_for`: the catalog's
    references attached); raise `Invalid` if it cannot."""
    try:
        snapshot_for(policy)
    except CompileError as exc:
        raise Invalid(str(exc)) from None


def parse_stored(text_: str, source: str) -> Policy:
    return load_policy_text(text_, source)


def unified_diff(old: Version, new: Version) -> str:
    return "".join(difflib.unified_diff(
        old.text.splitlines(keepends=True), new.text.splitlines(keepends=True),
        fromfile=f"{old.cluster}@{old.number}", tofile=f"{new.cluster}@{new.number}"))


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _grants(conn: Connection, token_id: int) -> tuple[tuple[str, str], ...]:
    """A token's per-cluster roles, sorted by cluster."""
    rows = conn.execute(select(GrantRow.cluster, GrantRow.role).where(
        GrantRow.token_id == token_id).order_by(GrantRow.cluster))
    return tuple((r.cluster, r.role) for r in rows)


def make_engine(url: URL, busy_timeout_ms: int = 10000) -> Engine:
    """An engine for the store; writers ask for the write lock with `sqlite_immediate`."""
    return db.make_engine(url, busy_timeout_ms=busy_timeout_ms)


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the newest Alembic revision."""
    db.migrate(engine, _MIGRATIONS, _LOCK_ID)


class Store:
    """Clusters, policy versions and tokens in one database."""

    def __init__(self, url: str | URL, *, create_default: bool = True,
                 busy_timeout_ms: int = 10000) -> None:
        self.url = normalize_url(url) if isinstance(url, str) else url
        self.key = bus_key(self.url)
        self.engine = make_engine(self.url, busy_timeout_ms)
        self._write_lock = threading.Lock()
        migrate(self.engine)
        # Cluster name -> the sealer of its customer-managed key (`sealing`); None: clear.
        self.sealers: sealing.Resolver | None = sealing.resolver_for(self)
        # (Only the existence is read: a sealed default version needs no key to open.)
        if create_default and self.latest_number(DEFAULT_CLUSTER) is None:
            self.ensure_cluster(DEFAULT_CLUSTER, default_policy(), "system",
                                "initial default policy")

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def close(self) -> None:
        close = getattr(self.sealers, "close", None)
        if callable(close):
            close()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(sqlite_immediate=True)
            with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session

    # -- clusters and versions ---------------------------------------------------------

    def clusters(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(ClusterRow.name).order_by(ClusterRow.name)))

    def _cluster_id(self, s: Session, name: str) -> int:
        found = s.scalar(select(ClusterRow.id).where(ClusterRow.name == name))
        if found is None:
            raise NotFound(f"cluster {name!r} not found")
        return found

    def seal_with(self, sealers: sealing.Resolver | None) -> None:
        """Seal what is stored per cluster under the cluster's key from now on (see
        `sealing`; `keys.runtime.StoreKeys` is the resolver a process installs)."""
        close = getattr(self.sealers, "close", None)
        if self.sealers is not sealers and callable(close):
            close()
        self.sealers = sealers

    def sealer_for(self, name: str) -> sealing.FieldSealer | None:
        """The sealer of `name`'s key (None: store in clear); the hook for every row kept
        per cluster (policy versions here; identity metadata in `identity/`)."""
        return self.sealers(name) if self.sealers is not None else None

    def _opened(self, name: str, stored: str, aad: bytes, where: str) -> str:
        """A stored field's clear text, opened if it is sealed (a resolver that still
        believes the cluster has no key is asked again: the sealed row says it has)."""
        if not sealing.is_sealed(stored):
            return stored
        sealer = self.sealer_for(name)
        forget = getattr(self.sealers, "forget", None)
        if sealer is None and callable(forget):
            forget(name)
            sealer = self.sealer_for(name)
        return sealing.open_text(sealer, stored, aad, where, StoreUnavailable)

    def open_field(self, cluster: str, stored: str, aad: bytes, where: str) -> str:
        """A stored field sealed under `cluster`'s key (or in clear), opened: for tables
        outside this module that hold sensitive text (identities)."""
        return self._opened(cluster, stored, aad, where)

    def seal_field(self, s: Session, cluster: str, text: str, aad: bytes, where: str) -> str:
        """`text` as it may be written in transaction `s`: sealed under `cluster`'s key
        if it names one now, refused (StoreUnavailable) if that key cannot be used."""
        return sealing.seal_for_write(s.connection(), self.sealers, cluster, text, aad,
                                      where, StoreUnavailable)

    def _policy_text(self, name: str, row: VersionRow) -> str:
        """A version's policy text, opened if it is sealed."""
        return self._opened(name, row.policy, sealing.policy_aad(name, row.number),
                            f"policy version {name}@{row.number}")

    def _sealed_policy(self, s: Session, name: str, number: int, body: str) -> str:
        """`body` as version `number` may be stored: sealed if the cluster names a key
        now (read in this transaction), refused if that key cannot be used here."""
        return sealing.seal_for_write(s.connection(), self.sealers, name, body,
                                      sealing.policy_aad(name, number),
                                      f"policy version {name}@{number}", StoreUnavailable)

    def _sealed_json(self, s: Session, name: str, number: int, json_form: str) -> str:
        """The version's JSON form, sealed exactly as its text (`_sealed_policy`)."""
        return sealing.seal_for_write(s.connection(), self.sealers, name, json_form,
                                      sealing.policy_aad(name, number) + _JSON_AAD,
                                      f"policy version {name}@{number}", StoreUnavailable)

    def _version(self, name: str, row: VersionRow, policy: Policy | None = None) -> Version:
        """The version in `row`; `policy`: the one just written (not parsed again)."""
        body = self._policy_text(name, row)
        if policy is None:
            policy = self._stored_policy(name, row, body)
        return Version(name, row.number, policy, body, row.principal,
                       _aware(row.created_at), row.summary)

    def _stored_policy(self, name: str, row: VersionRow, body: str) -> Policy:
        """The version's policy from its JSON form where it has one (a 100k-rule policy
        loads in about a second instead of half a minute of YAML), else from its text."""
        source = f"{name}@{row.number}"
        if row.policy_json is not None:
            fast = self._opened(name, row.policy_json,
                                sealing.policy_aad(name, row.number) + _JSON_AAD,
                                f"policy version {source}")
            try:
                return parse_stored(fast, source)
            except PolicyError:  # cannot happen for what `commit` wrote; the text decides
                pass
        return parse_stored(body, source)

    def ensure_cluster(self, name: str, policy: Policy, principal: str,
                       summary: str) -> Version:
        """The cluster's current version, creating the cluster with `policy` if absent."""
        try:
            return self.current(name)
        except NotFound:
            pass
        try:
            return self.commit(name, policy, principal, summary, create=True)
        except IntegrityError:  # created concurrently by another process
            return self.current(name)

    def latest_number(self, name: str) -> int | None:
        """The current version number (cheap: polled by feeds)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.max(VersionRow.number)).join(
                    ClusterRow, ClusterRow.id == VersionRow.cluster_id).where(
                    ClusterRow.name == name)).scalar()

    def current(self, name: str) -> Version:
        with self._session() as s:
            cid = self._cluster_id(s, name)
            row = s.scalars(select(VersionRow).where(VersionRow.cluster_id == cid)
                            .order_by(VersionRow.number.desc()).limit(1)).one()
            return self._version(name, row)

    def version(self, name: str, number: int) -> Version:
        with self._session() as s:
            cid = self._cluster_id(s, name)
            row = s.scalar(select(VersionRow).where(VersionRow.cluster_id == cid,
                                                    VersionRow.number == number))
            if row is None:
                raise NotFound(f"cluster {name!r} has no version {number}")
            return self._version(name, row)

    def versions(self, name: str, limit: int = 100) -> list[Version]:
        """Newest first."""
        with self._session() as s:
            cid = self._cluster_id(s, name)
            rows = s.scalars(select(VersionRow).where(VersionRow.cluster_id == cid)
                             .order_by(VersionRow.number.desc()).limit(limit))
            return [self._version(name, r) for r in rows]

    def commit(self, name: str, policy: Policy, principal: str, summary: str, *,
               create: bool = False) -> Version:
        """Store `policy` as the cluster's next version (unless it equals the current one)
        and announce it. Raises `Invalid` if it does not compile, `NotFound` if the cluster
        does not exist and `create` is false."""
        with loading():  # a big policy: no collector pass stalls the process meanwhile
            return self._commit(name, policy, principal, summary, create)

    def _commit(self, name: str, policy: Policy, principal: str, summary: str,
                create: bool) -> Version:
        if create and not CLUSTER_NAME.fullmatch(name):
            raise Invalid(f"invalid cluster name {name!r}: lower-case letters, digits and "
                          "'-', at most 63", "name")
        check_policy(policy)
        body, json_form = stored_texts(policy)
        # Prove outside the write lock (it can take seconds); the transaction re-proves
        # only if the ceiling changed meanwhile.
        try:
            proved: tuple[str | None, bool] | None = self._gate(name, policy)
        except NotFound:
            proved = None
        for attempt in range(5):
            try:
                version, changed = self._insert(name, body, principal, summary, create,
                                                policy, proved, json_form=json_form)
                break
            except IntegrityError:
                if attempt == 4 or create:
                    raise
        if changed:
            bus.publish(self.key, name, version.number)
        return version

    def _insert(self, name: str, body: str, principal: str, summary: str,
                create: bool, policy: Policy,
                proved: tuple[str | None, bool] | None = None, *,
                json_form: str | None = None) -> tuple[Version, bool]:
        with self._write_lock, self._session(write=True) as s:
            # Lock the cluster row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises
            # writers) so that concurrent writers in other processes queue here instead of
            # racing for the same next version number.
            cid = s.scalar(select(ClusterRow.id).where(ClusterRow.name == name)
                           .with_for_update())
            if cid is None:
                if not create:
                    raise NotFound(f"cluster {name!r} not found")
                row = ClusterRow(name=name, created_at=_now())
                s.add(row)
                s.flush()
                cid = row.id
            last = s.scalars(select(VersionRow).where(VersionRow.cluster_id == cid)
                             .order_by(VersionRow.number.desc()).limit(1)).first()
            if last is not None and self._policy_text(name, last) == body:
                return self._version(name, last), False
            self._admit(s, cid, name, policy, proved)
            number = (last.number if last else 0) + 1
            new = VersionRow(cluster_id=cid, number=number,
                             policy=self._sealed_policy(s, name, number, body),
                             policy_json=self._sealed_json(
                                 s, name, number,
                                 dump_policy_json(policy) if json_form is None else json_form),
                             principal=principal, created_at=_now(), summary=summary)
            s.add(new)
            s.flush()
            if self.dialect == "postgresql":
                s.execute(text("SELECT pg_notify(:channel, :payload)"),
                          {"channel": NOTIFY_CHANNEL, "payload": f"{name}:{new.number}"})
            return self._version(name, new, policy), True

    def _gate(self, name: str, policy: Policy) -> tuple[str | None, bool]:
        """Run the gate against the cluster's ceiling now; return the (ceiling text,
        strict) it passed, for `_admit` to recognise."""
        found = self.ceiling(name)
        admit(policy, found.policy if found else None, found.strict if found else False)
        return (found.text, found.strict) if found else (None, False)

    def _admit(self, s: Session, cid: int, name: str, policy: Policy,
               proved: tuple[str | None, bool] | None = None) -> None:
        """The one gate of every version write (commit, PUT/PATCH, rollback, create),
        inside the write transaction so that a ceiling set concurrently is seen; a
        proof made just before against the same ceiling (`proved`) is not repeated."""
        found = self._ceiling(s, cid, name)
        if proved is not None and proved == ((found.text, found.strict) if found
                                             else (None, False)):
            return
        admit(policy, found.policy if found else None, found.strict if found else False)

    def _ceiling(self, s: Session, cid: int, name: str) -> Ceiling | None:
        row = s.scalar(select(CeilingRow).where(CeilingRow.cluster_id == cid))
        if row is None:
            return None
        body = self._opened(name, row.policy, sealing.ceiling_aad(name), f"ceiling of {name}")
        return Ceiling(name, parse_stored(body, f"{name} ceiling"), body,
                       row.strict, row.principal, _aware(row.set_at))

    def ceiling(self, name: str) -> Ceiling | None:
        with self._session() as s:
            return self._ceiling(s, self._cluster_id(s, name), name)

    def set_ceiling(self, name: str, ceiling: Policy, principal: str,
                    strict: bool = False) -> Ceiling:
        """Set the cluster's ceiling; refused (`Refused`) when the policy in force already
        exceeds it, so a ceiling never describes a cluster that is not under it."""
        check_policy(ceiling)
        body = dump_policy(ceiling)
        with self._write_lock, self._session(write=True) as s:
            cid = s.scalar(select(ClusterRow.id).where(ClusterRow.name == name)
                           .with_for_update())
            if cid is None:
                raise NotFound(f"cluster {name!r} not found")
            last = s.scalars(select(VersionRow).where(VersionRow.cluster_id == cid)
                             .order_by(VersionRow.number.desc()).limit(1)).one()
            current = parse_stored(self._policy_text(name, last), f"{name}@{last.number}")
            try:
                admit(current.model_copy(update={"assertions": []}), ceiling, strict)
            except Refused as exc:
                raise Refused([f"the policy in force (version {last.number}) is not under "
                               "this ceiling; narrow it first", *exc.problems]) from None
            row = s.scalar(select(CeilingRow).where(CeilingRow.cluster_id == cid))
            if row is None:
                row = CeilingRow(cluster_id=cid)
                s.add(row)
            row.policy = sealing.seal_for_write(s.connection(), self.sealers, name, body,
                                                sealing.ceiling_aad(name),
                                                f"ceiling of {name}", StoreUnavailable)
            row.strict, row.principal, row.set_at = strict, principal, _now()
            s.flush()
            return Ceiling(name, ceiling, body, strict, principal, _aware(row.set_at))

    def clear_ceiling(self, name: str) -> bool:
        """Remove the cluster's ceiling; False if it had none."""
        with self._write_lock, self._session(write=True) as s:
            cid = self._cluster_id(s, name)
            gone = s.execute(delete(CeilingRow).where(CeilingRow.cluster_id == cid))
            return bool(getattr(gone, "rowcount", 0))

    def create_cluster(self, name: str, policy: Policy, principal: str,
                       summary: str = "created") -> Version:
        """A new cluster whose version 1 is `policy`; `Exists` if the name is taken (unlike
        `ensure_cluster` and PUT, an explicit create never touches an existing cluster)."""
        with loading():
            return self._create_cluster(name, policy, principal, summary)

    def _create_cluster(self, name: str, policy: Policy, principal: str,
                        summary: str) -> Version:
        if not CLUSTER_NAME.fullmatch(name):
            raise Invalid(f"invalid cluster name {name!r}: lower-case letters, digits and "
                          "'-', at most 63", "name")
        check_policy(policy)
        body, json_form = stored_texts(policy)
        try:
            with self._write_lock, self._session(write=True) as s:
                if s.scalar(select(ClusterRow.id).where(ClusterRow.name == name)) is not None:
                    raise Exists(f"cluster {name!r} already exists")
                row = ClusterRow(name=name, created_at=_now())
                s.add(row)
                s.flush()
                self._admit(s, row.id, name, policy)
                new = VersionRow(cluster_id=row.id, number=1,
                                 policy=self._sealed_policy(s, name, 1, body),
                                 policy_json=self._sealed_json(s, name, 1, json_form),
                                 principal=principal, created_at=_now(), summary=summary)
                s.add(new)
                s.flush()
                if self.dialect == "postgresql":
                    s.execute(text("SELECT pg_notify(:channel, :payload)"),
                              {"channel": NOTIFY_CHANNEL, "payload": f"{name}:1"})
                version = self._version(name, new, policy)
        except IntegrityError:  # created concurrently by another process
            raise Exists(f"cluster {name!r} already exists") from None
        bus.publish(self.key, name, 1)
        return version

    def delete_cluster(self, name: str) -> int:
        """Remove a cluster and all its versions; returns how many versions went.
        `default` is refused: every open of a store recreates it, so deleting it would
        only reset it behind the operator's back. Audit records keep the name."""
        if name == DEFAULT_CLUSTER:
            raise Invalid(f"cluster {DEFAULT_CLUSTER!r} cannot be deleted (every store "
                          "has it); change its policy with `cluster update` instead", "name")
        with self._write_lock, self._session(write=True) as s:
            cid = s.scalar(select(ClusterRow.id).where(ClusterRow.name == name)
                           .with_for_update())
            if cid is None:
                raise NotFound(f"cluster {name!r} not found")
            gone = s.scalar(select(func.count()).select_from(VersionRow)
                            .where(VersionRow.cluster_id == cid))
            s.execute(delete(VersionRow).where(VersionRow.cluster_id == cid))
            s.execute(delete(CeilingRow).where(CeilingRow.cluster_id == cid))
            s.execute(delete(ClusterRow).where(ClusterRow.id == cid))
        return int(gone or 0)

    def rollback(self, name: str, number: int, principal: str) -> Version:
        """A new version whose content is version `number`'s."""
        old = self.version(name, number)
        return self.commit(name, old.policy, principal, f"rollback to version {number}")

    def diff(self, name: str, a: int, b: int) -> str:
        return unified_diff(self.version(name, a), self.version(name, b))

    # -- tokens ------------------------------------------------------------------------

    def identify(self, token_hash: str) -> Principal | Refusal:
        """The principal of an active, unexpired token, else why not."""
        with self.engine.connect() as conn:
            row = conn.execute(select(TokenRow.id, TokenRow.name, TokenRow.role,
                                      TokenRow.expires_at).where(
                TokenRow.token_hash == token_hash, TokenRow.revoked_at.is_(None))).first()
            if row is None:
                return Refusal("invalid or revoked token")
            if row.expires_at is None or _aware(row.expires_at) <= _now():
                return Refusal(expired_message(row.name, _aware(row.expires_at or _now())))
            return Principal(row.name, row.role, _grants(conn, row.id))

    def principal_for(self, token_hash: str) -> Principal | None:
        found = self.identify(token_hash)
        return found if isinstance(found, Principal) else None

    def create_token(self, name: str, role: str, created_by: str, *,
                     bootstrap: bool = False, lifetime: float = DEFAULT_TOKEN_LIFETIME,
                     grants: list[str] | dict[str, str] | None = None
                     ) -> tuple[str, TokenInfo]:
        """A new token valid for `lifetime` seconds, with cluster-wide `role` (or `none`)
        and per-cluster `grants` (`["prod=operator"]` or `{"prod": "operator"}`): returns
        the clear text (shown once) and its record."""
        if role not in WIDE_ROLES:
            raise Invalid(f"unknown role {role!r}; expected one of {', '.join(WIDE_ROLES)}",
                          "role")
        try:
            pairs = parse_grants(grants or [])
        except ValueError as exc:
            raise Invalid(str(exc), "grants") from None
        if role == "none" and not pairs:
            raise Invalid("a token with role 'none' needs at least one grant "
                          "(CLUSTER=ROLE)", "grants")
        if not name.strip() or len(name) > 200:
            raise Invalid("token name must be 1-200 characters", "name")
        if not 60 <= lifetime <= MAX_TOKEN_LIFETIME:
            raise Invalid("token lifetime must be between 1 minute and 5 years", "expires")
        with self._session(write=True) as s:
            return self._add_token(s, name, role, created_by, bootstrap, lifetime, pairs)

    def _add_token(self, s: Session, name: str, role: str, created_by: str, bootstrap: bool,
                   lifetime: float, grants: tuple[tuple[str, str], ...] = ()
                   ) -> tuple[str, TokenInfo]:
        token = new_token()
        now = _now()
        row = TokenRow(name=name, role=role, token_hash=hash_token(token),
                       bootstrap=bootstrap, created_by=created_by, created_at=now,
                       expires_at=now + timedelta(seconds=lifetime))
        s.add(row)
        s.flush()
        for cluster, granted in grants:
            s.add(GrantRow(token_id=row.id, cluster=cluster, role=granted))
        s.flush()
        return token, self._token_info(row, grants)

    @staticmethod
    def _token_info(row: TokenRow, grants: tuple[tuple[str, str], ...] = ()) -> TokenInfo:
        return TokenInfo(row.id, row.name, row.role, row.bootstrap, row.created_by,
                         _aware(row.created_at),
                         _aware(row.revoked_at) if row.revoked_at else None,
                         _aware(row.expires_at) if row.expires_at else None, grants)

    def tokens(self, *, include_revoked: bool = False) -> list[TokenInfo]:
        with self._session() as s:
            query = select(TokenRow).order_by(TokenRow.id)
            if not include_revoked:
                query = query.where(TokenRow.revoked_at.is_(None))
            rows = list(s.scalars(query))
            by_token: dict[int, list[tuple[str, str]]] = {}
            for grant in s.scalars(select(GrantRow).order_by(GrantRow.cluster)):
                by_token.setdefault(grant.token_id, []).append((grant.cluster, grant.role))
            return [self._token_info(r, tuple(by_token.get(r.id, ()))) for r in rows]

    @staticmethod
    def _active(s: Session, ident: str) -> list[TokenRow]:
        query = select(TokenRow).where(TokenRow.revoked_at.is_(None))
        query = query.where(TokenRow.id == int(ident)) if ident.isdigit() else query.where(
            TokenRow.name == ident)
        rows = list(s.scalars(query))
        if not rows:
            raise NotFound(f"no active token {ident!r}")
        return rows

    def revoke_token(self, ident: str) -> list[TokenInfo]:
        """Revoke the active token(s) with this id or name (their dashboard sessions end
        with them); NotFound if none."""
        with self._session(write=True) as s:
            rows = self._active(s, ident)
            for row in rows:
                row.revoked_at = _now()
            return [self._token_info(r) for r in rows]

    def rotate_token(self, ident: str, principal: str, *,
                     lifetime: float = DEFAULT_TOKEN_LIFETIME) -> tuple[str, TokenInfo]:
        """In one transaction: revoke the active token(s) with this id or name and issue a
        new secret with the same name and role. Returns the new token in clear."""
        if not 60 <= lifetime <= MAX_TOKEN_LIFETIME:
            raise Invalid("token lifetime must be between 1 minute and 5 years", "expires")
        with self._session(write=True) as s:
            rows = self._active(s, ident)
            conn = s.connection()
            if len({(r.name, r.role, _grants(conn, r.id)) for r in rows}) > 1:
                raise Invalid(f"several active tokens are named {ident!r} with different "
                              "roles; rotate one by its id", "name")
            for row in rows:
                row.revoked_at = _now()
            first = rows[0]
            return self._add_token(s, first.name, first.role, principal, first.bootstrap,
                                   lifetime, _grants(conn, first.id))

    def ensure_bootstrap(self) -> str | None:
        """On first start (no token at all), create the bootstrap admin token and return it
        in clear (to print once); otherwise None."""
        with self._session() as s:
            if s.scalar(select(func.count()).select_from(TokenRow)):
                return None
        token, _ = self.create_token("bootstrap", "admin", "system", bootstrap=True)
        return token

    def rotate_bootstrap(self, principal: str) -> str:
        """Revoke the bootstrap admin token(s) and issue a new one (returned in clear)."""
        with self._session(write=True) as s:
            for row in s.scalars(select(TokenRow).where(TokenRow.bootstrap.is_(True),
                                                        TokenRow.revoked_at.is_(None))):
                row.revoked_at = _now()
        token, _ = self.create_token("bootstrap", "admin", principal, bootstrap=True)
        return token

    # -- dashboard sessions ------------------------------------------------------------

    def open_session(self, token: str, lifetime: float = SESSION_LIFETIME
                     ) -> tuple[str, Principal] | Refusal:
        """Log in with `token`: a new session id (in clear, for the cookie) and the
        principal, or why not. The session ends when the token does, if sooner."""
        if not token or len(token) > MAX_SECRET:
            return Refusal("invalid or revoked token")
        now = _now()
        with self._session(write=True) as s:
            row = s.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(token),
                                                  TokenRow.revoked_at.is_(None)))
            if row is None:
                return Refusal("invalid or revoked token")
            if row.expires_at is None or _aware(row.expires_at) <= now:
                return Refusal(expired_message(row.name, _aware(row.expires_at or now)))
            # Rows expired for a day are of no use to anyone: drop them as we go.
            s.execute(delete(SessionRow).where(
                SessionRow.expires_at < now - timedelta(days=1)))
            session_id = new_session_id()
            s.add(SessionRow(session_hash=hash_token(session_id), token_id=row.id,
                             created_at=now, expires_at=min(
                                 now + timedelta(seconds=lifetime), _aware(row.expires_at))))
            return session_id, Principal(row.name, row.role, _grants(s.connection(), row.id))

    def session_principal(self, session_hash: str) -> Principal | Refusal:
        """The principal of a live session whose token is still active and unexpired."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(TokenRow.id, TokenRow.name, TokenRow.role, TokenRow.expires_at,
                       SessionRow.expires_at.label("session_expires"))
                .join(TokenRow, TokenRow.id == SessionRow.token_id)
                .where(SessionRow.session_hash == session_hash,
                       SessionRow.revoked_at.is_(None), TokenRow.revoked_at.is_(None))
            ).first()
            now = _now()
            if row is None or _aware(row.session_expires) <= now:
                return Refusal("the session has ended; log in again")
            if row.expires_at is None or _aware(row.expires_at) <= now:
                return Refusal(expired_message(row.name, _aware(row.expires_at or now)))
            return Principal(row.name, row.role, _grants(conn, row.id))

    def close_session(self, session_hash: str) -> bool:
        """Revoke a session (logout); False if it was not live."""
        with self._session(write=True) as s:
            row = s.scalar(select(SessionRow).where(SessionRow.session_hash == session_hash,
                                                    SessionRow.revoked_at.is_(None)))
            if row is None:
                return False
            row.revoked_at = _now()
            return True

    # -- health ------------------------------------------------------------------------

    def ping(self) -> None:
        """Read one row (SQLite's `SELECT 1` would not touch the file); raises the
        driver's error if the database cannot be read."""
        with self.engine.connect() as conn:
            conn.execute(select(ClusterRow.id).limit(1)).first()


def unavailable_reason(exc: BaseException) -> str | None:
    """One line saying why the database is out of reach, if `exc` means that (connection
    refused or lost, server shutting down, file locked or unreadable, pool exhausted);
    None for any other error."""
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, SATimeout):
        return "no database connection free (pool timeout)"
    if isinstance(exc, OperationalError | InterfaceError) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated):
        orig = getattr(exc, "orig", None) or exc
        first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        return first[:300]
    return None


def open_store(url: str | None = None) -> Store:
    """The store at `url`, default the embedded SQLite file under the data directory."""
    if url is None:
        from egressguard.paths import default_store_url
        url = default_store_url()
    return Store(url)


__all__ = ["DEFAULT_CLUSTER", "Exists", "Invalid", "NotFound", "PolicyError", "Store",
           "StoreError", "StoreUnavailable", "TokenInfo", "Version", "open_store",
           "unavailable_reason"]
