"""Following the store's identities from a gateway started while the store is down:
nobody authenticates meanwhile (fail closed), and the identities arrive once the store
answers, without a restart. The store is PostgreSQL behind a relay the test cuts."""

from __future__ import annotations

import base64
import time

import pytest

from egressguard.identity import Directory
from egressguard.identity.directory import Authenticated, Refused
from egressguard.identity.follow import follow_identities
from egressguard.identity.store import IdentityStore
from egressguard.store import Store
from tests.relay import Relay

pytestmark = pytest.mark.timeout(60)


def test_identities_arrive_once_a_store_down_at_start_answers(
        pg_relay: tuple[Relay, str], pg_url: str) -> None:
    relay, url = pg_relay
    with Store(pg_url) as store:
        secret, _ = IdentityStore(store).create("web", "test")
    credentials = base64.b64encode(f"web:{secret}".encode())
    relay.cut()
    holder, follower = follow_identities(url, interval=0.1)
    try:
        assert holder.stored == ()  # the store is down: no identity authenticates
        assert isinstance(Directory(holder.stored).basic(credentials), Refused)
        time.sleep(1.5)  # a retry or so while still down
        assert holder.stored == ()
        relay.restore()
        deadline = time.monotonic() + 30
        while not holder.stored:
            assert time.monotonic() < deadline, "the identities never arrived"
            time.sleep(0.1)
        assert Directory(holder.stored).basic(credentials) == Authenticated("web")
    finally:
        follower.stop()


def test_an_open_store_whose_identities_cannot_be_read_fails_the_start(
        sqlite_url: str) -> None:
    """With the store open (serve's own), the first read is at start and a failure
    raises: `serve` reports it and exits, it does not run on without identities."""
    with Store(sqlite_url) as store:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE identities")
        with pytest.raises(Exception, match="identities"):
            follow_identities(sqlite_url, store)
