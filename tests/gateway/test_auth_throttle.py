"""Brute-forcing proxy secrets through a running gateway: after too many wrong Basic
credentials from one address, or for one identity name, further ones are answered 429
without being verified (a correct secret too), audited and counted; other addresses and
names, and credentials already verified, keep working."""

from __future__ import annotations

import socket
from collections.abc import Callable

from prometheus_client import REGISTRY

from egressguard.identity import IdentityHolder
from egressguard.identity.store import IdentityStore
from egressguard.identity.throttle import NAME_LIMIT, SOURCE_LIMIT, name_key
from tests.gateway.conftest import Running, Server
from tests.gateway.test_identity import (  # noqa: F401 (fixtures)
    Client,
    basic,
    identities,
    start,
    store,
)


class From(Client):
    """A fresh connection from a given loopback address (all of 127/8 is local)."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                             source_address=(source, 0))
        self.buf = b""


def once(gw: Running, upstream: Server, source: str, credential: str) -> tuple[int, bytes]:
    client = From(gw.port, source)
    try:
        return client.get(upstream.port, credential)
    finally:
        client.close()


def throttled_count() -> float:
    return REGISTRY.get_sample_value("egressguard_auth_throttled_total") or 0.0


def test_wrong_secrets_from_one_address_get_429_unverified_while_other_addresses_work(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:  # noqa: F811
    ids, holder = identities
    secret, _ = ids.create("web", "test")
    gw = start(gateway_factory, identities=holder)
    right, wrong = basic("web", secret or ""), basic("web", "egi_wrong")
    for _ in range(SOURCE_LIMIT):
        assert once(gw, upstream, "127.0.0.2", wrong)[0] == 407
    before = throttled_count()
    # The right secret is not even verified now: it would have been a 200.
    status, answer = once(gw, upstream, "127.0.0.2", right)
    assert status == 429, answer
    assert b"Retry-After: " in answer and b"too many invalid proxy credentials" in answer
    assert throttled_count() == before + 1
    # Another address authenticates as usual, and once the directory has verified that
    # credential, the throttled address may present it too (no scrypt to spend).
    assert once(gw, upstream, "127.0.0.3", right)[0] == 200
    assert once(gw, upstream, "127.0.0.2", right)[0] == 200
    assert once(gw, upstream, "127.0.0.2", wrong)[0] == 429
    refusal = gw.sink.wait_for(lambda e: e.rule == "identity:throttled")
    assert refusal.permitted is False and refusal.client_address.startswith("127.0.0.2:")


def test_guessing_one_names_secret_from_many_addresses_is_throttled_by_name(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:  # noqa: F811
    ids, holder = identities
    web_secret, _ = ids.create("web", "test")
    # Another identity, counted apart from web (names share hashed counters).
    other = next(n for n in (f"batch{i}" for i in range(100))
                 if name_key(n) != name_key("web"))
    other_secret, _ = ids.create(other, "test")
    gw = start(gateway_factory, identities=holder)
    for i in range(NAME_LIMIT):  # each address stays below its own limit
        source = f"127.0.1.{1 + i // (SOURCE_LIMIT - 1)}"
        assert once(gw, upstream, source, basic("web", f"egi_guess{i}"))[0] == 407
    fresh = "127.0.2.1"
    assert once(gw, upstream, fresh, basic("web", web_secret or ""))[0] == 429
    # authenticated: the scoped rule is not for it (403), not 407/429
    assert once(gw, upstream, fresh, basic(other, other_secret or ""))[0] == 403
    # A name nobody holds is throttled alike: the 429 does not tell which names exist.
    ghost = next(n for n in (f"ghost{i}" for i in range(100))
                 if name_key(n) not in (name_key("web"), name_key(other)))
    for i in range(NAME_LIMIT):
        source = f"127.0.3.{1 + i // (SOURCE_LIMIT - 1)}"
        assert once(gw, upstream, source, basic(ghost, f"egi_guess{i}"))[0] == 407
    assert once(gw, upstream, "127.0.4.1", basic(ghost, "egi_any"))[0] == 429
