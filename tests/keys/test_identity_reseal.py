"""Identities written before the bootstrap cluster had a customer-managed key do not stay
in clear: setting the key seals them, and so does the next identity write when the key
was set some other way; they still read, and authenticate, the same afterwards."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from egressguard.identity.store import IdentityStore
from egressguard.keys import clusterkeys
from egressguard.keys.runtime import seal_store
from egressguard.keys.vault import KeyVault
from egressguard.store import Store
from egressguard.store.schema import IdentityRow
from egressguard.store.sealing import PREFIX
from tests.keys.conftest import MASTER, audit_vault, point_cluster, unique

pytestmark = pytest.mark.timeout(60)
SPIFFE = "spiffe://prod.example/ns/billing/sa/api"


@pytest.fixture
def clear(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[Store, KeyVault, IdentityStore]]:
    """A store whose identities were written while no cluster named a key."""
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EGRESSGUARD_MASTER_KEY", base64.b64encode(MASTER).decode())
    store = Store(store_url)
    keys = seal_store(store)
    vault = audit_vault(store_url, unique("cmk"))
    identities = IdentityStore(store)
    identities.create("billing", "t", description="pays the invoices", spiffe_ids=[SPIFFE])
    identities.create("batch", "t", secret=False, jwt_subjects=["sa:batch"])
    assert not any(raw.startswith(PREFIX) for raw in raw_fields(store))  # in clear
    yield store, vault, identities
    keys.close()
    vault.close()
    store.close()


def raw_fields(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return [raw for row in conn.execute(select(IdentityRow.description,
                                                   IdentityRow.methods)) for raw in row]


def assert_sealed_and_readable(store: Store, identities: IdentityStore) -> None:
    raw = raw_fields(store)
    assert len(raw) == 4 and all(r.startswith(PREFIX) for r in raw), raw
    assert not any("invoices" in r or "spiffe://" in r or "sa:batch" in r for r in raw)
    billing = identities.show("billing")
    assert (billing.description, billing.spiffe_ids) == ("pays the invoices", (SPIFFE,))
    assert identities.show("batch").jwt_subjects == ("sa:batch",)


def test_setting_the_bootstrap_clusters_key_seals_identities_written_before_it(
        clear: tuple[Store, KeyVault, IdentityStore]) -> None:
    store, vault, identities = clear
    before = {i.name: i.updated_at for i in identities.list()}
    assert clusterkeys.apply(store, "default", {"keyVaultProperties": {
        "keyName": "audit", "keyVaultUri": f"vault://{vault.name}",
        "userIdentity": "gateway"}}, "t")
    assert_sealed_and_readable(store, identities)
    # Not a change of the identities: gateways following them have nothing to reload.
    assert {i.name: i.updated_at for i in identities.list()} == before
    assert identities.reseal() == 0  # nothing left in clear


def test_a_key_set_elsewhere_is_caught_up_by_the_next_identity_write(
        clear: tuple[Store, KeyVault, IdentityStore], store_url: str) -> None:
    store, vault, identities = clear
    point_cluster(store.engine, store_url, vault.name)  # the key table only
    assert all(not r.startswith(PREFIX) for r in raw_fields(store))
    identities.set_enabled("batch", False)  # any write seals every clear row
    assert_sealed_and_readable(store, identities)


def test_without_a_key_nothing_is_sealed(
        clear: tuple[Store, KeyVault, IdentityStore]) -> None:
    store, _, identities = clear
    assert identities.reseal() == 0
    identities.rotate("billing")
    assert not any(raw.startswith(PREFIX) for raw in raw_fields(store))
