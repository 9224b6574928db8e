"""A stand-in gateway process: follows a cluster's policy and prints each version it puts
in force, with what it now decides for a probe URL (run by test_propagation)."""

from __future__ import annotations

import sys
import time

from egressguard.control.runtime import PolicyFeed
from egressguard.engine import Request
from egressguard.engine.holder import Active

PROBE = "https://probe.example.com/"


def main() -> None:
    url, cluster = sys.argv[1], sys.argv[2]
    feed = PolicyFeed(url, cluster)

    def report(active: Active) -> None:
        verdict = active.snapshot.decide(Request.from_url(PROBE)).verdict.value
        print(f"version {active.version} {verdict} {time.time():.6f}", flush=True)

    holder = feed.start()
    holder.subscribe(report)
    print(f"ready {holder.active.version}", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    feed.stop()


if __name__ == "__main__":
    main()
