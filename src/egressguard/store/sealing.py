"""Envelope encryption of what the store keeps about a cluster (issue 13): its policy
versions, and, through the same hook, identity metadata (the `identity/` package seals
its rows with `seal_text`/`open_text` under the owning cluster's sealer).

The store knows nothing of keys (it sits below them): whoever composes a process hands
it a `Resolver`, cluster name -> `FieldSealer` or None (`keys.runtime.StoreKeys`: the
cluster's `Envelope`, which wraps a data key with the cluster's customer-managed key and
names key and version in every blob). A cluster without a key stores text in clear, as
before; rows written before its key was set stay readable in clear (rotation never
re-encrypts). A sealed field is `egressguard-sealed:v1:` + base64 of the envelope blob,
bound (associated data) to where it lives, so a sealed row moved to another cluster or
version does not open.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Protocol

from egressguard.errors import EgressguardError

PREFIX = "egressguard-sealed:v1:"


class FieldSealer(Protocol):
    """What the store asks of a cluster's key (`keys.envelope.Envelope` offers it)."""

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes: ...

    def open(self, blob: bytes, aad: bytes = b"") -> bytes: ...


Resolver = Callable[[str], FieldSealer | None]
# What a composition root installs (the CLI: `keys.runtime.StoreKeys.for_store`) so that
# every `Store` the process opens, including the policy sources' own, seals per cluster.
_factory: Callable[[Any], Resolver | None] | None = None


def install(factory: Callable[[Any], Resolver | None] | None) -> None:
    """Give every `Store` opened from now on the resolver `factory(store)` returns."""
    global _factory
    _factory = factory


def resolver_for(store: Any) -> Resolver | None:
    return _factory(store) if _factory is not None else None


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def seal_text(sealer: FieldSealer | None, text: str, aad: bytes) -> str:
    """`text` sealed (or in clear without a sealer). A sealer that cannot seal now
    (suspended) raises: nothing is ever written in clear by mistake."""
    if sealer is None:
        return text
    return PREFIX + base64.b64encode(sealer.seal(text.encode("utf-8"), aad)).decode()


def open_text(sealer: FieldSealer | None, stored: str, aad: bytes, where: str,
              unavailable: Callable[[str], Exception]) -> str:
    """The clear text of a stored field; `unavailable(message)` is raised (the store's
    503 error) when it is sealed and this process cannot open it, naming why."""
    if not is_sealed(stored):
        return stored
    if sealer is None:
        raise unavailable(f"{where} is sealed under a customer-managed key this process "
                          "has no access to (hint: run with the cluster's key vault and "
                          "master key)")
    try:
        blob = base64.b64decode(stored[len(PREFIX):], validate=True)
        return sealer.open(blob, aad).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise unavailable(f"{where}: sealed field is malformed (altered)") from None
    except EgressguardError as exc:  # cannot decrypt, tampered, suspended: say which
        raise unavailable(f"{where}: {exc}") from None


def named_key(conn: Any, cluster: str) -> str | None:
    """The key `cluster` names (`vault://V/keys/K`), read on the writer's own connection,
    inside its transaction: a resolver may not know yet of a key set by another process
    (it re-asks only every few seconds), so every write asks the table itself. One
    primary-key lookup (`cluster_keys`, store revision 0400_cluster_keys)."""
    from sqlalchemy import text as sql  # here: the CLI installs this module at start-up

    row = conn.execute(sql("SELECT key_vault_uri, key_name FROM cluster_keys "
                           "WHERE cluster = :cluster"), {"cluster": cluster}).first()
    return None if row is None else f"{str(row[0]).rstrip('/')}/keys/{row[1]}"


def seal_for_write(conn: Any, resolver: Resolver | None, cluster: str, text: str,
                   aad: bytes, where: str, unavailable: Callable[[str], Exception]) -> str:
    """`text` as it may be stored now: sealed under the cluster's key, or in clear only
    when the cluster names no key at commit time. A key this process cannot use (no
    resolver, a key it cannot open, a suspended key) raises `unavailable(message)`:
    nothing is written in clear for a cluster that has a key."""
    key: str | None = None
    try:
        sealer = resolver(cluster) if resolver is not None else None
        if sealer is None:
            key = named_key(conn, cluster)
            if key is None:
                return text
            forget = getattr(resolver, "forget", None)
            if resolver is not None and callable(forget):
                forget(cluster)  # its "no key" is stale: ask it again, now
                sealer = resolver(cluster)
        if sealer is not None:
            return seal_text(sealer, text, aad)
    except EgressguardError as exc:  # suspended, cannot wrap: never fall back to clear
        raise unavailable(f"{where} not written: cluster {cluster!r}: {exc}") from None
    raise unavailable(f"{where} not written: cluster {cluster!r} names the customer-managed "
                      f"key {key} but this process has no access to it (hint: run with the "
                      "cluster's key vault and master key; a library user calls "
                      "keys.runtime.seal_store)")


def identity_aad(name: str, field: str) -> bytes:
    """Where an identity's sealed field lives (bound to the identity's name)."""
    return f"identities|{name}|{field}".encode()


def ceiling_aad(cluster: str) -> bytes:
    """Where a cluster's ceiling lives (one per cluster)."""
    return f"cluster_ceilings|{cluster}".encode()


def policy_aad(cluster: str, number: int) -> bytes:
    """Where a policy version lives: binds its ciphertext to that cluster and number."""
    return f"policy_versions|{cluster}|{number}".encode()
