"""Each cluster's customer-managed key (`keyVaultProperties`), stored beside its policy.

The key is not policy: rolling a policy back must never roll the root key back (old data
would stay wrapped by a key the cluster no longer names), so it lives in its own table
(`cluster_keys`, store revision 0400_cluster_keys) and every change is validated against
the vault first (`keys.cluster.validate`). `state` is the cluster's `Running`/`Suspended`
as a fresh vault check sees it: the same facts the envelope's periodic check depends on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from egressguard.keys import schema
from egressguard.keys.cluster import (
    FIELD,
    MEMBERS,
    InvalidKeyVaultProperties,
    KeyVaultProperties,
    gather,
    refusals,
    validate,
)
from egressguard.keys.provider import KeyUnavailable, ProviderUnreachable
from egressguard.store.schema import ClusterRow

RUNNING, SUSPENDED = "Running", "Suspended"
log = logging.getLogger("egressguard.keys")
KEY_PROPERTY = "keyVaultProperties"


def default_identity(cluster: str) -> str:
    """The identity a cluster uses when `userIdentity` is empty."""
    return f"cluster-{cluster}"


@dataclass(frozen=True)
class ClusterKeyState:
    """What `cluster show` reports: the state, why, and the key version in use."""

    state: str
    reason: str = ""
    key_version: str | None = None  # the version new data keys are wrapped by

    def to_arm(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.reason:
            out["stateReason"] = self.reason
        return out


def _unreachable(exc: SQLAlchemyError) -> ProviderUnreachable:
    return ProviderUnreachable(f"cluster keys: store unreachable ({type(exc).__name__})")


def get(engine: Engine, cluster: str) -> KeyVaultProperties | None:
    """The cluster's key, or None (the cluster uses the local audit key)."""
    try:
        with engine.connect() as conn:
            row = conn.execute(select(schema.cluster_keys).where(
                schema.cluster_keys.c.cluster == cluster)).first()
    except SQLAlchemyError as exc:
        raise _unreachable(exc) from None
    if row is None:
        return None
    return KeyVaultProperties(row.key_name, row.key_vault_uri, row.key_version,
                              row.user_identity)


def all_keys(engine: Engine) -> dict[str, KeyVaultProperties]:
    """Every cluster that names a key, with it (the fleet's periodic key check)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(schema.cluster_keys)).all()
    except SQLAlchemyError as exc:
        raise _unreachable(exc) from None
    return {row.cluster: KeyVaultProperties(row.key_name, row.key_vault_uri,
                                            row.key_version, row.user_identity)
            for row in rows}


def merged(current: KeyVaultProperties | None, value: Any) -> Any:
    """A PATCH's members over the current ones (so `--set ...keyVersion=` alone works);
    None clears the property."""
    if value is None or not isinstance(value, dict) or current is None:
        return value
    return {**current.to_arm(), **value}


def put(engine: Engine, store_url: str, master_key: bytes, cluster: str, value: Any,
        principal: str) -> KeyVaultProperties | None:
    """Validate `value` (ARM JSON, None to clear) against the vault and store it."""
    if value is None:
        _write(engine, cluster, None, principal)
        return None
    props = validate(value, store_url, master_key, default_identity(cluster))
    _write(engine, cluster, props, principal)
    return props


def _write(engine: Engine, cluster: str, props: KeyVaultProperties | None,
           principal: str) -> None:
    table = schema.cluster_keys
    try:
        with engine.connect() as conn:
            conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                # Queue behind a policy write in progress (it holds the cluster row; on
                # SQLite BEGIN IMMEDIATE serialises): that write then either committed
                # before the key or sees it (`store.sealing.seal_for_write`).
                conn.execute(select(ClusterRow.id).where(ClusterRow.name == cluster)
                             .with_for_update())
                if props is None:
                    conn.execute(delete(table).where(table.c.cluster == cluster))
                    return
                values = {"key_name": props.key_name, "key_version": props.key_version,
                          "key_vault_uri": props.key_vault_uri,
                          "user_identity": props.user_identity,
                          "updated_by": principal[:200], "updated_at": datetime.now(UTC)}
                done = conn.execute(update(table).where(table.c.cluster == cluster)
                                    .values(**values))
                if not done.rowcount:
                    conn.execute(insert(table).values(cluster=cluster, **values))
    except SQLAlchemyError as exc:
        raise _unreachable(exc) from None


def state(props: KeyVaultProperties | None, store_url: str, master_key: bytes,
          cluster: str) -> ClusterKeyState:
    """`Running` unless the key or the identity's access to it is gone (`Suspended`)."""
    if props is None:
        return ClusterKeyState(RUNNING)
    try:
        facts = gather(props, store_url, master_key,
                       props.user_identity or default_identity(cluster))
    except KeyUnavailable as exc:
        return ClusterKeyState(SUSPENDED, str(exc))
    problems = refusals(props, facts)
    if problems:
        return ClusterKeyState(SUSPENDED, problems[0][1])
    assert facts.key is not None
    return ClusterKeyState(RUNNING, key_version=props.key_version or facts.key.latest)


def to_arm(props: KeyVaultProperties | None, st: ClusterKeyState) -> dict[str, Any]:
    """The read-only and key properties a cluster resource carries."""
    out = st.to_arm()
    if props is not None:
        out["keyVaultProperties"] = props.to_arm()
        if st.key_version:
            out["keyInUse"] = f"{props.key_vault_uri}/keys/{props.key_name}/{st.key_version}"
    return out


def _url(store: Any) -> str:
    return str(store.url.render_as_string(hide_password=False))


def apply(store: Any, cluster: str, properties: Any, principal: str) -> bool:
    """Store the `keyVaultProperties` an ARM body's properties name (merged over the
    current ones), after checking them against the vault; False if it names none."""
    if not isinstance(properties, dict) or KEY_PROPERTY not in properties:
        return False
    from egressguard.keys.master import load_master_key

    value = merged(get(store.engine, cluster), properties[KEY_PROPERTY])
    put(store.engine, _url(store), load_master_key(), cluster, value, principal)
    if value is not None:
        _reseal_identities(store, cluster)
    return True


def _reseal_identities(store: Any, cluster: str) -> None:
    """Identities follow the bootstrap cluster's key: seal those written in clear before
    it (`identity.store.IdentityStore.reseal`). A process that cannot use the key it just
    set leaves them to the next identity write, which seals them or is refused."""
    from egressguard.identity.store import IdentityStore
    from egressguard.store.store import DEFAULT_CLUSTER, StoreUnavailable

    if cluster != DEFAULT_CLUSTER:
        return
    try:
        IdentityStore(store).reseal()
    except StoreUnavailable as exc:
        log.warning("identities not re-sealed under the new key: %s", exc)


def annotate(store: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """A cluster resource with its `state`, key and key in use."""
    cluster = resource["name"]
    props = get(store.engine, cluster)
    if props is None:
        st = ClusterKeyState(RUNNING)
    else:
        from egressguard.keys.master import load_master_key

        st = state(props, _url(store), load_master_key(), cluster)
    resource["properties"].update(to_arm(props, st))
    return resource


__all__ = [
    "FIELD",
    "KEY_PROPERTY",
    "MEMBERS",
    "RUNNING",
    "SUSPENDED",
    "ClusterKeyState",
    "InvalidKeyVaultProperties",
    "annotate",
    "apply",
    "default_identity",
    "get",
    "merged",
    "put",
    "state",
    "to_arm",
]
