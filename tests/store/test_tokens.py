"""Tokens expire and rotate; dashboard sessions are server-side rows that never outlive their
token. On SQLite and PostgreSQL, against the real schema (including the migration that
gives tokens from before expiry existed a lifetime)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from egressguard.store import Invalid, NotFound, Store
from egressguard.store import db as store_db
from egressguard.store.tokens import Principal, Refusal, hash_token, parse_lifetime

MIGRATIONS = Path(__file__).resolve().parents[2] / "src" / "egressguard" / "store" / "migrations"


def _expire(store: Store, name: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET expires_at = :t WHERE name = :n"),
                     {"t": datetime.now(UTC) - timedelta(seconds=1), "n": name})


def test_a_new_token_expires_in_ninety_days_unless_told(store: Store) -> None:
    _, info = store.create_token("ci", "viewer", "alice")
    assert info.expires_at is not None
    left = info.expires_at - datetime.now(UTC)
    assert timedelta(days=89, hours=23) < left <= timedelta(days=90)
    _, short = store.create_token("short", "viewer", "alice", lifetime=parse_lifetime("30d"))
    assert short.expires_at is not None
    assert timedelta(days=29) < short.expires_at - datetime.now(UTC) <= timedelta(days=30)


def test_an_expired_token_is_refused_with_a_message_naming_the_fix(store: Store) -> None:
    token, _ = store.create_token("ci", "operator", "alice")
    assert store.identify(hash_token(token)) == Principal("ci", "operator")
    _expire(store, "ci")
    refused = store.identify(hash_token(token))
    assert isinstance(refused, Refusal)
    assert "expired" in refused.reason and "egressguard token rotate ci" in refused.reason
    assert store.principal_for(hash_token(token)) is None


@pytest.mark.parametrize("lifetime", [0, 59, 6 * 365 * 86400])
def test_a_lifetime_out_of_bounds_is_refused(store: Store, lifetime: float) -> None:
    with pytest.raises(Invalid):
        store.create_token("ci", "viewer", "alice", lifetime=lifetime)


@pytest.mark.parametrize("text_", ["", "forever", "-1d", "30", "0s", "99999d", "1d;drop"])
def test_bad_lifetimes_do_not_parse(text_: str) -> None:
    with pytest.raises(ValueError):
        parse_lifetime(text_)


def test_rotate_issues_a_new_secret_and_revokes_the_old(store: Store) -> None:
    old, first = store.create_token("ci", "auditor", "alice")
    new, info = store.rotate_token("ci", "bob", lifetime=parse_lifetime("7d"))
    assert new != old and (info.name, info.role) == ("ci", "auditor") and info.id != first.id
    assert store.principal_for(hash_token(old)) is None
    assert store.principal_for(hash_token(new)) == Principal("ci", "auditor")
    assert [t.name for t in store.tokens()] == ["ci"]


def test_an_expired_token_can_be_rotated(store: Store) -> None:
    store.create_token("ci", "viewer", "alice")
    _expire(store, "ci")
    new, _ = store.rotate_token("ci", "alice")
    assert store.principal_for(hash_token(new)) == Principal("ci", "viewer")
    with pytest.raises(NotFound):
        store.rotate_token("nobody", "alice")


def test_a_session_is_stored_hashed_and_ends_with_logout(store: Store) -> None:
    token, _ = store.create_token("web", "viewer", "alice")
    opened = store.open_session(token)
    assert not isinstance(opened, Refusal)
    session_id, who = opened
    assert who == Principal("web", "viewer") and session_id.startswith("egs_")
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT session_hash FROM dashboard_sessions")).scalars()
        assert list(stored) == [hash_token(session_id)]  # never the id in clear
    assert store.session_principal(hash_token(session_id)) == who
    assert store.close_session(hash_token(session_id))
    assert isinstance(store.session_principal(hash_token(session_id)), Refusal)


def test_a_session_dies_with_its_token(store: Store) -> None:
    token, _ = store.create_token("web", "admin", "alice")
    revoked = store.open_session(token)
    expiring = store.open_session(token)
    assert not isinstance(revoked, Refusal) and not isinstance(expiring, Refusal)
    _expire(store, "web")
    reason = store.session_principal(hash_token(expiring[0]))
    assert isinstance(reason, Refusal) and "expired" in reason.reason
    store.revoke_token("web")
    assert isinstance(store.session_principal(hash_token(revoked[0])), Refusal)


def test_a_session_never_outlives_its_token(store: Store) -> None:
    token, info = store.create_token("web", "viewer", "alice", lifetime=120)
    opened = store.open_session(token, lifetime=8 * 3600)
    assert not isinstance(opened, Refusal)
    with store.engine.connect() as conn:
        ends = conn.execute(text("SELECT expires_at FROM dashboard_sessions")).scalar_one()
    ends = ends if isinstance(ends, datetime) else datetime.fromisoformat(ends)
    ends = ends if ends.tzinfo else ends.replace(tzinfo=UTC)
    assert info.expires_at is not None and ends <= info.expires_at


def test_unknown_or_oversized_credentials_open_no_session(store: Store) -> None:
    for secret in ("", "egt_nope", "x" * 100_000):
        assert isinstance(store.open_session(secret), Refusal)


def test_tokens_from_before_expiry_existed_get_a_lifetime(store_url: str) -> None:
    """Upgrading must not leave a token that never expires."""
    engine = store_db.make_engine(store_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text(
            "INSERT INTO api_tokens (name, role, token_hash, bootstrap, created_by, "
            "created_at) VALUES ('legacy', 'admin', :h, false, 'x', :t)"),
            {"h": hash_token("egt_legacy"), "t": datetime.now(UTC)})
    engine.dispose()
    with Store(store_url) as store:
        (info,) = [t for t in store.tokens() if t.name == "legacy"]
        assert info.expires_at is not None
        assert timedelta(days=89) < info.expires_at - datetime.now(UTC) <= timedelta(days=90)
        assert store.principal_for(hash_token("egt_legacy")) == Principal("legacy", "admin")
