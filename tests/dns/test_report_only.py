"""Report-only at the DNS filter means what it means everywhere (enforce.checkpoint): the
policy's flag, a collection's flag and `--report-only` each answer the query and record
the would-be denial, including the filter's own refusals of malformed names."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from egressguard.dns import FilterConfig, FilterThread, holder_for
from tests.dns.conftest import ListSink
from tests.dns.upstream_server import Upstream

pytestmark = pytest.mark.timeout(30)

POLICY = textwrap.dedent("""\
    restrict_outbound_network_access: true
    report_only: {policy_flag}
    application_rule_collections:
      - name: trial
        priority: 100
        action: deny
        report_only: {collection_flag}
        rules:
          - {{name: trial, targets: [allowed.example.com], protocols: ['https:443']}}
      - name: allowed
        priority: 200
        action: allow
        rules:
          - {{name: example, targets: ['*.example.com'], protocols: ['https:443']}}
    """)

# (switch that is on, name asked, deciding layer)
CASES = [
    ("policy", "evil.net", "default"),
    ("option", "evil.net", "default"),
    ("collection", "allowed.example.com", "application"),
    ("policy", "a%2eexample.com", "guard"),     # a malformed name: refused by the filter
    ("option", "a%2eexample.com", "guard"),
]


@pytest.fixture
def run(upstream: Upstream, tmp_path: Path) -> Iterator[object]:
    threads: list[FilterThread] = []

    def start(switch: str, sink: ListSink) -> tuple[str, int]:
        path = tmp_path / "policy.yaml"
        path.write_text(POLICY.format(policy_flag=str(switch == "policy").lower(),
                                      collection_flag=str(switch == "collection").lower()))
        config = FilterConfig(listen=("127.0.0.1", 0), upstream=upstream.address,
                              timeout=1.0, report_only=switch == "option")
        thread = FilterThread(holder_for(path), config, sink)
        threads.append(thread)
        return thread.start()

    yield start
    for thread in threads:
        thread.stop()


@pytest.mark.parametrize(("switch", "name", "layer"), CASES,
                         ids=[f"{s}-{n}" for s, n, _ in CASES])
def test_report_only_forwards_the_query_and_records_the_would_be_denial(
        run: object, upstream: Upstream, switch: str, name: str, layer: str) -> None:
    sink = ListSink()
    addr = run(switch, sink)  # type: ignore[operator]
    before = len(upstream.resolver.queries)
    reply = dns.query.udp(dns.message.make_query(name, "A", use_edns=0), addr[0],
                          port=addr[1], timeout=5)
    assert not reply.extended_errors()                 # not a refusal of the filter's own
    assert len(upstream.resolver.queries) == before + 1  # relayed to the upstream
    if layer != "guard":
        assert dns.rcode.to_text(reply.rcode()) == "NOERROR" and reply.answer
    [event] = sink.events
    assert (event.kind, event.verdict, event.permitted, event.layer) == (
        "dns", "deny", True, layer)


def test_without_report_only_the_same_queries_are_refused(run: object,
                                                          upstream: Upstream) -> None:
    sink = ListSink()
    addr = run("none", sink)  # type: ignore[operator]
    before = len(upstream.resolver.queries)
    for name in ("evil.net", "allowed.example.com", "a%2eexample.com"):
        reply = dns.query.udp(dns.message.make_query(name, "A", use_edns=0), addr[0],
                              port=addr[1], timeout=5)
        assert dns.rcode.to_text(reply.rcode()) == "NXDOMAIN" and reply.extended_errors()
    assert len(upstream.resolver.queries) == before
    assert [(e.verdict, e.permitted) for e in sink.events] == [("deny", False)] * 3
