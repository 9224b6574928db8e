"""The store feed when the store goes away: one log line per state change (not a traceback
per retry), the last good policy stays in force, and changes made meanwhile arrive once
the store answers again.

The store is PostgreSQL reached through a loopback TCP relay the test can cut (SQLite is
a local file: it does not become unreachable the way a database server does).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from egressguard.engine import Request
from egressguard.policy import Policy
from egressguard.source import PolicyFeed
from egressguard.store import Store

pytestmark = pytest.mark.timeout(60)
PROBE = "https://probe.example.com/"
OPEN = Policy(restrict_outbound_network_access=True, allowed_fqdn_list=["probe.example.com"])


class Relay:
    """127.0.0.1:port -> target; `cut()` closes every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def relay(pg_url: str) -> Iterator[tuple[Relay, str]]:
    url = make_url(pg_url)
    relay = Relay((url.host or "127.0.0.1", url.port or 5432))
    yield relay, url.set(port=relay.port).render_as_string(hide_password=False)
    relay.close()


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_unreachable_store_logs_once_keeps_the_last_policy_and_recovers(
        relay: tuple[Relay, str], pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    cut, relayed_url = relay
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
