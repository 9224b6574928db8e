"""Each stored version keeps a compact JSON form beside its YAML text (issue 14 item 7):
feeds load it far faster; the text stays what operators see and diff, and decides when
the JSON form is missing (versions written before it) or does not load."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from egressguard.keys.runtime import StoreKeys
from egressguard.keys.vault import KeyVault
from egressguard.policy import Policy, load_policy_text
from egressguard.store import Store
from egressguard.store.schema import VersionRow
from egressguard.store.sealing import PREFIX
from egressguard.store.store import StoreUnavailable
from tests.store.fixtures import sqlite_store  # noqa: F401
from tests.store.test_sealed_versions import keyed, policy  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def _rows(store: Store) -> dict[int, tuple[str, str | None]]:
    with store.engine.connect() as conn:
        return {r.number: (r.policy, r.policy_json) for r in conn.execute(
            select(VersionRow.number, VersionRow.policy, VersionRow.policy_json))}


def test_a_version_is_stored_with_a_json_form_that_loads_to_the_same_policy(
        sqlite_store: Store) -> None:  # noqa: F811
    written = policy("json-form")
    version = sqlite_store.commit("default", written, "t", "s")  # type: ignore[arg-type]
    text, form = _rows(sqlite_store)[version.number]
    assert form is not None and form.startswith("{")
    assert load_policy_text(form) == load_policy_text(text) == written
    again = Store(sqlite_store.url)
    try:
        current = again.current("default")
    finally:
        again.close()
    assert current.policy == written and "json-form" in current.text  # text still YAML
    assert not current.text.lstrip().startswith("{")


@pytest.mark.parametrize("form", [None, '{"not_a_policy_field": 1}', "{broken"])
def test_a_version_without_a_loadable_json_form_loads_from_its_text(
        sqlite_store: Store, form: str | None) -> None:  # noqa: F811
    version = sqlite_store.commit("default", policy("from-text"), "t", "s")  # type: ignore[arg-type]
    with sqlite_store.engine.begin() as conn:
        conn.execute(update(VersionRow).where(VersionRow.number == version.number)
                     .values(policy_json=form))
    loaded = sqlite_store.current("default").policy
    assert isinstance(loaded, Policy)
    assert loaded.application_rule_collections[0].rules[0].name == "from-text"


def test_the_json_form_is_sealed_like_the_text(
        keyed: tuple[Store, KeyVault, StoreKeys]) -> None:  # noqa: F811
    store, _, _ = keyed
    version = store.commit("default", policy("sealed-json"), "t", "s")  # type: ignore[arg-type]
    text, form = _rows(store)[version.number]
    assert text.startswith(PREFIX) and form is not None and form.startswith(PREFIX)
    assert "sealed-json" not in form
    assert store.current("default").policy.application_rule_collections[0].rules[0].name \
        == "sealed-json"


def test_a_sealed_json_form_moved_to_another_version_does_not_open(
        keyed: tuple[Store, KeyVault, StoreKeys]) -> None:  # noqa: F811
    store, _, _ = keyed
    a = store.commit("default", policy("aaa"), "t", "s")  # type: ignore[arg-type]
    b = store.commit("default", policy("bbb"), "t", "s")  # type: ignore[arg-type]
    form_a = _rows(store)[a.number][1]
    with store.engine.begin() as conn:
        conn.execute(update(VersionRow).where(VersionRow.number == b.number)
                     .values(policy_json=form_a))
    with pytest.raises(StoreUnavailable):
        store.current("default")

