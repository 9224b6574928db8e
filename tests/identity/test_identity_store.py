"""The identities table on SQLite and PostgreSQL: secrets shown once and kept hashed,
rotate and revoke, and what a gateway's directory makes of them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from egressguard.identity import Directory
from egressguard.identity.directory import Authenticated, Refused
from egressguard.identity.store import IdentityStore
from egressguard.store import Exists, Invalid, NotFound, Store
from tests.store.fixtures import store

__all__ = ["store"]


def creds(name: str, secret: str | None) -> bytes:
    return base64.b64encode(f"{name}:{secret}".encode())


@pytest.fixture
def ids(store: Store) -> Iterator[IdentityStore]:
    yield IdentityStore(store)


def test_secret_is_shown_once_and_stored_only_as_a_salted_hash(
        ids: IdentityStore, store: Store) -> None:
    secret, identity = ids.create("web", "alice", description="shop front")
    assert secret is not None and secret.startswith("egi_")
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT secret_hash FROM identities")).scalar_one()
    assert secret not in stored and stored.startswith("scrypt$")
    assert "secret_hash" not in identity.as_dict()
    assert Directory(ids.load()).basic(creds("web", secret)) == Authenticated("web")


def test_rotate_replaces_the_secret_and_revoke_ends_every_method(ids: IdentityStore) -> None:
    old, _ = ids.create("web", "alice", spiffe_ids=["spiffe://prod.example/web"])
    new, _ = ids.rotate("web")
    directory = Directory(ids.load())
    assert isinstance(directory.basic(creds("web", old)), Refused)
    assert directory.basic(creds("web", new)) == Authenticated("web")
    assert directory.certificate(["spiffe://prod.example/web"], None) == "web"
    ids.revoke("web")
    directory = Directory(ids.load())
    assert isinstance(directory.basic(creds("web", new)), Refused)
    assert directory.certificate(["spiffe://prod.example/web"], None) is None
    assert ids.show("web").state(datetime.now(UTC)) == "revoked"


def test_expired_and_disabled_identities_do_not_authenticate(ids: IdentityStore) -> None:
    secret, _ = ids.create("web", "alice", lifetime=120)
    later = datetime.now(UTC) + timedelta(seconds=121)
    assert isinstance(Directory(ids.load(), now=later).basic(creds("web", secret)), Refused)
    directory = Directory(ids.load())
    assert directory.next_change is not None  # the gateway rebuilds when it passes
    ids.set_enabled("web", False)
    assert isinstance(Directory(ids.load()).basic(creds("web", secret)), Refused)
    ids.set_enabled("web", True)
    assert Directory(ids.load()).basic(creds("web", secret)) == Authenticated("web")


def test_bad_names_duplicates_and_unknown_names_are_clear_errors(ids: IdentityStore) -> None:
    ids.create("web", "alice")
    with pytest.raises(Exists, match="already exists"):
        ids.create("web", "alice")
    for bad in ("", "a b", "-x", "x" * 129):
        with pytest.raises(Invalid):
            ids.create(bad, "alice")
    with pytest.raises(Invalid, match="SPIFFE"):
        ids.create("cert", "alice", spiffe_ids=["https://not-spiffe"])
    with pytest.raises(NotFound):
        ids.revoke("nobody")


def test_fingerprint_changes_with_every_change(ids: IdentityStore) -> None:
    before = ids.fingerprint()
    ids.create("web", "alice")
    created = ids.fingerprint()
    ids.revoke("web")
    assert len({before, created, ids.fingerprint()}) == 3
