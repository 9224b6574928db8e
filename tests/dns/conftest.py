from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from egressguard.audit.events import DecisionEvent
from egressguard.dns import FilterConfig, FilterThread, holder_for
from egressguard.engine.holder import SnapshotHolder
from tests.dns.upstream_server import Upstream

POLICY = textwrap.dedent("""\
    restrict_outbound_network_access: true
    application_rule_collections:
      - name: blocked
        priority: 100
        action: deny
        rules:
          - {name: blocked-net, targets: [.blocked.net], protocols: ['https:443']}
      - name: allowed
        priority: 200
        action: allow
        rules:
          - name: example
            targets: ['*.example.com', 'bücher.test.org', upper.test.org]
            protocols: ['https:443']
    network_rule_collections:
      - name: corp
        priority: 100
        action: allow
        rules:
          - {name: corp, destinations: [10.0.0.0/8], protocols: [UDP, TCP], ports: ['1-65535']}
    """)


class ListSink:
    def __init__(self) -> None:
        self.events: list[DecisionEvent] = []

    def emit(self, event: DecisionEvent) -> None:
        self.events.append(event)


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def holder(policy_file: Path) -> SnapshotHolder:
    return holder_for(policy_file)


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def start_filter(upstream: Upstream, holder: SnapshotHolder, sink: ListSink
                 ) -> Iterator[object]:
    """Start a filter with config overrides; returns its (host, port)."""
    running: list[FilterThread] = []

    def start(**overrides: object) -> tuple[str, int]:
        config = FilterConfig(**{"listen": ("127.0.0.1", 0), "upstream": upstream.address,
                                 "timeout": 1.0, **overrides})  # type: ignore[arg-type]
        thread = FilterThread(holder, config, sink)
        running.append(thread)
        return thread.start()

    yield start
    for thread in running:
        thread.stop()


@pytest.fixture
def dnsfilter(start_filter: object) -> tuple[str, int]:
    return start_filter()  # type: ignore[operator,no-any-return]
