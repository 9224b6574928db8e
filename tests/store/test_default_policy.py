"""One shipped default: a new store's `default` cluster (and `cluster create` without a
file) starts with `DENY_ALL`, and the commented file shipped beside the gateway says the
same policy."""

from __future__ import annotations

from pathlib import Path

from egressguard.policy import load_policy
from egressguard.source import DENY_ALL
from egressguard.store import Store, default_policy

SHIPPED = Path(__file__).parents[2] / "src" / "egressguard" / "gateway" / "default_policy.yaml"


def test_a_new_store_starts_deny_all_as_the_shipped_file_says(store_url: str) -> None:
    assert default_policy() is DENY_ALL
    assert load_policy(SHIPPED) == DENY_ALL
    with Store(store_url) as store:
        first = store.current("default")
        assert (first.number, first.policy) == (1, DENY_ALL)
