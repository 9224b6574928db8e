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


def policy_aad(cluster: str, number: int) -> bytes:
    """Where a policy version lives: binds its ciphertext to that cluster and number."""
    return f"policy_versions|{cluster}|{number}".encode()
