"""Creating and deleting clusters explicitly (`Store.create_cluster`, `delete_cluster`), on
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from egressguard.policy import Policy, load_policy_text
from egressguard.store import Exists, Invalid, NotFound, Store, bus

RESTRICTED = Policy(restrict_outbound_network_access=True)


def test_created_cluster_starts_at_version_one_and_is_announced(store: Store) -> None:
    seen: list[tuple[str, int]] = []
    unsubscribe = bus.subscribe(store.key, lambda c, n: seen.append((c, n)))
    try:
        version = store.create_cluster("prod", RESTRICTED, "alice", "created")
    finally:
        unsubscribe()
    assert (version.cluster, version.number, version.principal) == ("prod", 1, "alice")
    assert store.current("prod").policy.restrict_outbound_network_access is True
    assert store.clusters() == ["default", "prod"]
    assert ("prod", 1) in seen


def test_create_never_touches_an_existing_cluster(store: Store) -> None:
    store.create_cluster("prod", RESTRICTED, "alice")
    with pytest.raises(Exists, match="'prod' already exists"):
        store.create_cluster("prod", Policy(), "mallory")
    with pytest.raises(Exists):
        store.create_cluster("default", Policy(), "mallory")
    assert [v.number for v in store.versions("prod")] == [1]
    assert store.current("prod").policy.restrict_outbound_network_access is True


@pytest.mark.parametrize("name", ["Prod", "-x", "a" * 64, "a_b", "", "a/b", "x" * 300])
def test_create_refuses_bad_names(store: Store, name: str) -> None:
    with pytest.raises(Invalid, match="invalid cluster name"):
        store.create_cluster(name, RESTRICTED, "alice")
    assert store.clusters() == ["default"]


def test_create_refuses_a_policy_that_does_not_compile(store: Store) -> None:
    bad = load_policy_text("restrict_outbound_network_access: true\n"
                           "network_rule_collections:\n"
                           "- name: c\n  priority: 100\n  action: allow\n"
                           "  rules:\n  - name: r\n    destinations: [NoSuchTag]\n"
                           "    protocols: [TCP]\n    ports: ['443']\n")
    with pytest.raises(Invalid):
        store.create_cluster("prod", bad, "alice")
    assert store.clusters() == ["default"]


def test_delete_removes_the_cluster_and_its_history(store: Store) -> None:
    store.create_cluster("prod", RESTRICTED, "alice")
    store.commit("prod", Policy(), "alice", "open")
    assert store.delete_cluster("prod") == 2
    assert store.clusters() == ["default"]
    with pytest.raises(NotFound):
        store.current("prod")
    assert store.create_cluster("prod", RESTRICTED, "bob").number == 1


def test_delete_refuses_default_and_unknown_clusters(store: Store) -> None:
    with pytest.raises(Invalid, match="cannot be deleted"):
        store.delete_cluster("default")
    with pytest.raises(NotFound):
        store.delete_cluster("nope")
    assert store.clusters() == ["default"]
