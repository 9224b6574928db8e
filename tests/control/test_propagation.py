"""A policy change is in force in every gateway within 1 s: in-process at once, and in a
second OS process through PostgreSQL LISTEN/NOTIFY or SQLite polling (measured)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egressguard.control.runtime import PolicyFeed
from egressguard.engine import Request
from egressguard.engine.holder import Active
from egressguard.policy import Policy
from egressguard.store import Store

CHILD = Path(__file__).with_name("feed_child.py")
PROBE = "https://probe.example.com/"
OPEN = Policy(restrict_outbound_network_access=True, allowed_fqdn_list=["probe.example.com"])
CLOSED = Policy(restrict_outbound_network_access=True)


def test_in_process_change_is_in_force_at_once(store: Store) -> None:
    feed = PolicyFeed(store, "default", poll_interval=60)
    holder = feed.start()
    try:
        assert holder.active.version == "1"
        assert not holder.current.decide(Request.from_url(PROBE)).allowed
        started = time.perf_counter()
        store.commit("default", OPEN, "op", "open probe")
        elapsed = time.perf_counter() - started
        assert holder.active.version == "2"
        assert holder.current.decide(Request.from_url(PROBE)).allowed
        print(f"\nin-process propagation ({store.dialect}): commit + swap {elapsed * 1e3:.1f} ms")
    finally:
        feed.stop()


def test_feed_keeps_the_last_good_policy_and_other_clusters_do_not_disturb(store: Store
                                                                          ) -> None:
    store.commit("other", Policy(), "op", "created", create=True)
    feed = PolicyFeed(store, "default", poll_interval=60)
    holder = feed.start()
    swaps: list[Active] = []
    holder.subscribe(swaps.append)
    try:
        store.commit("other", OPEN, "op", "change other")
        assert swaps == [] and holder.active.version == "1"
    finally:
        feed.stop()


@pytest.mark.timeout(90)
def test_change_reaches_a_second_process_within_one_second(store_url: str) -> None:
    store = Store(store_url)
    proc = subprocess.Popen([sys.executable, str(CHILD), store_url, "default"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    latencies = []
    try:
        assert proc.stdout.readline().split() == ["ready", "1"]
        for round_, policy in enumerate([OPEN, CLOSED, OPEN, CLOSED, OPEN], start=2):
            started = time.time()
            store.commit("default", policy, "op", f"round {round_}")
            line = proc.stdout.readline().split()
            received = time.time()
            assert line[:3] == ["version", str(round_),
                                "allow" if policy is OPEN else "deny"], line
            latencies.append(received - started)
            time.sleep(0.05)
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        store.close()
    print(f"\ncross-process propagation ({store.dialect}): "
          f"median {statistics.median(latencies) * 1e3:.0f} ms, "
          f"max {max(latencies) * 1e3:.0f} ms over {len(latencies)} changes")
    assert max(latencies) < 1.0
