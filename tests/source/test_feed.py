"""The store feed when the store goes away: one log line per state change (not a traceback
per retry), the last good policy stays in force, and changes made meanwhile arrive once
the store answers again.

The store is PostgreSQL reached through a loopback TCP relay the test can cut
(`tests/relay.py`).
"""

from __future__ import annotations

import logging
import time

import pytest

from egressguard.engine import Request
from egressguard.policy import Policy
from egressguard.source import PolicyFeed
from egressguard.store import Store
from tests.relay import Relay

pytestmark = pytest.mark.timeout(60)
PROBE = "https://probe.example.com/"
OPEN = Policy(restrict_outbound_network_access=True, allowed_fqdn_list=["probe.example.com"])


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_unreachable_store_logs_once_keeps_the_last_policy_and_recovers(
        pg_relay: tuple[Relay, str], pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    cut, relayed_url = pg_relay
    direct = Store(pg_url)
    feed = PolicyFeed(relayed_url, "default", retry_interval=0.2)
    holder = feed.start()
    caplog.set_level(logging.INFO, logger="egressguard.source.feed")
    try:
        assert holder.active.version == "1"
        cut.cut()
        assert _wait(lambda: not feed.reachable, 5), "the feed never noticed"
        time.sleep(2.0)  # ~10 retries at 0.2 s: still one line
        direct.commit("default", OPEN, "op", "opened while the feed is cut off")
        time.sleep(0.5)
        assert holder.active.version == "1"  # the last good policy stays in force
        assert not holder.current.decide(Request.from_url(PROBE)).allowed
        cut.restore()
        assert _wait(lambda: holder.active.version == "2", 10), "no recovery"
        assert holder.current.decide(Request.from_url(PROBE)).allowed
    finally:
        feed.stop()
        direct.close()
    lines = [r for r in caplog.records if r.name == "egressguard.source.feed"]
    states = [r.getMessage() for r in lines if "reachable" in r.getMessage()]
    assert len(states) == 2, states
    assert "unreachable, keeping version 1" in states[0]
    assert "reachable again" in states[1]
    assert all(r.exc_info is None for r in lines)  # no tracebacks
    assert all("\n" not in r.getMessage() for r in lines)


def test_feed_of_an_unknown_cluster_raises_and_closes_what_it_opened(sqlite_url: str
                                                                     ) -> None:
    from egressguard.source import SourceError, follow

    with pytest.raises(SourceError, match="'nope' not found"):
        follow(None, "nope", sqlite_url)
