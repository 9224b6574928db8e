"""The store against real SQLite and real PostgreSQL: versions, rollback, tokens."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, inspect, text

from egressguard.control.auth import hash_token
from egressguard.policy import Policy, ServiceEndpointPolicy
from egressguard.store import Invalid, NotFound, Store, StoreURLError, normalize_url

pytestmark = pytest.mark.timeout(60)


def test_default_cluster_exists_restricted_deny_all(store: Store) -> None:
    version = store.current("default")
    assert version.number == 1
    assert version.principal == "system"
    assert version.policy.restrict_outbound_network_access is True
    assert not version.policy.allowed_fqdn_list and not version.policy.callouts


def test_each_change_is_a_new_version_with_principal_time_and_summary(store: Store) -> None:
    policy = Policy(restrict_outbound_network_access=True, allowed_fqdn_list=["a.example.com"])
    v2 = store.commit("default", policy, "alice", "allow a.example.com")
    assert (v2.number, v2.principal, v2.summary) == (2, "alice", "allow a.example.com")
    assert v2.created_at.tzinfo is not None
    assert store.current("default").policy == policy
    assert [v.number for v in store.versions("default")] == [2, 1]


def test_identical_content_makes_no_new_version(store: Store) -> None:
    same = store.current("default").policy
    assert store.commit("default", same, "bob", "noop").number == 1


def test_versions_are_immutable_and_diff_is_unified(store: Store) -> None:
    store.commit("default", Policy(allowed_fqdn_list=["a.example.com"]), "alice", "one")
    store.commit("default", Policy(allowed_fqdn_list=["b.example.com"]), "alice", "two")
    assert store.version("default", 2).policy.allowed_fqdn_list == ["a.example.com"]
    diff = store.diff("default", 2, 3)
    assert diff.startswith("--- default@2\n+++ default@3\n")
    assert "-- a.example.com" in diff and "+- b.example.com" in diff


def test_rollback_makes_a_new_version_with_the_old_content(store: Store) -> None:
    store.commit("default", Policy(allowed_fqdn_list=["a.example.com"]), "alice", "open")
    v3 = store.rollback("default", 1, "carol")
    assert v3.number == 3
    assert v3.summary == "rollback to version 1"
    assert v3.policy == store.version("default", 1).policy
    assert store.version("default", 2).policy.allowed_fqdn_list == ["a.example.com"]


def test_rollback_to_an_unknown_version_is_refused(store: Store) -> None:
    with pytest.raises(NotFound):
        store.rollback("default", 42, "carol")
    assert store.current("default").number == 1


def test_a_policy_that_does_not_compile_is_refused_and_nothing_changes(store: Store) -> None:
    bad = Policy(service_endpoint_policies=[ServiceEndpointPolicy(
        name="sep", aliases=["/services/Azure/NoSuchAlias"])])
    with pytest.raises(Invalid, match="unknown alias"):
        store.commit("default", bad, "mallory", "bad")
    assert store.current("default").number == 1


def test_unknown_cluster_is_not_found_and_new_names_are_validated(store: Store) -> None:
    with pytest.raises(NotFound):
        store.current("prod")
    with pytest.raises(Invalid):
        store.commit("Bad Name!", Policy(), "alice", "x", create=True)
    store.commit("prod", Policy(), "alice", "created", create=True)
    assert store.clusters() == ["default", "prod"]


def test_concurrent_writers_get_distinct_consecutive_numbers(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]
    errors: list[BaseException] = []

    def write(st: Store, who: str) -> None:
        try:
            for i in range(8):
                st.commit("default", Policy(allowed_fqdn_list=[f"{who}{i}.example.com"]),
                          who, f"{who} {i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, f"w{n}")) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    numbers = sorted(v.number for v in stores[0].versions("default"))
    assert numbers == list(range(1, 18))
    for st in stores:
        st.close()


def test_tokens_are_stored_hashed_and_shown_once(store: Store) -> None:
    token, info = store.create_token("ci", "viewer", "alice")
    assert info.role == "viewer"
    principal = store.principal_for(hash_token(token))
    assert principal is not None and (principal.name, principal.role) == ("ci", "viewer")
    with store.engine.connect() as conn:
        stored = [r[0] for r in conn.execute(text("SELECT token_hash FROM api_tokens"))]
    assert token not in stored and hash_token(token) in stored
    assert "token" not in info.as_dict()


def test_revoked_token_no_longer_authenticates(store: Store) -> None:
    token, info = store.create_token("ci", "operator", "alice")
    store.revoke_token(str(info.id))
    assert store.principal_for(hash_token(token)) is None
    with pytest.raises(NotFound):
        store.revoke_token(str(info.id))


def test_unknown_role_is_refused(store: Store) -> None:
    with pytest.raises(Invalid, match="unknown role"):
        store.create_token("x", "root", "alice")


def test_bootstrap_token_only_on_first_start_and_rotatable(store: Store) -> None:
    first = store.ensure_bootstrap()
    assert first is not None
    assert store.ensure_bootstrap() is None
    second = store.rotate_bootstrap("alice")
    assert store.principal_for(hash_token(first)) is None
    rotated = store.principal_for(hash_token(second))
    assert rotated is not None and rotated.role == "admin"


def _head() -> str:
    """The newest revision of the store's migrations (the chain grows; do not hard-code)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from egressguard.store import store as store_module

    cfg = Config()
    cfg.set_main_option("script_location", str(store_module._MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_migrations_use_alembic_version_and_leave_other_tables_alone(store_url: str) -> None:
    url = normalize_url(store_url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version_audit (version_num VARCHAR(32))"))
        conn.execute(text("INSERT INTO alembic_version_audit VALUES ('audit1')"))
    Store(store_url).close()
    Store(store_url).close()  # reopening is a no-op
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == \
            _head()
        assert conn.execute(text("SELECT version_num FROM alembic_version_audit")
                            ).scalar() == "audit1"
    tables = set(inspect(engine).get_table_names())
    assert {"clusters", "policy_versions", "api_tokens", "alembic_version_audit"} <= tables
    engine.dispose()


def test_store_urls_map_postgres_to_psycopg_and_refuse_others(tmp_path: object) -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("/tmp/x.db").drivername == "sqlite"
    with pytest.raises(StoreURLError):
        normalize_url("mysql://u@h/db")


def test_sqlite_store_runs_in_wal_mode(sqlite_url: str) -> None:
    st = Store(sqlite_url)
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    st.close()
