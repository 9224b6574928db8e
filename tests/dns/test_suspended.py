"""A suspended cluster (its customer-managed key is unavailable, issue 13) makes the DNS
filter answer SERVFAIL, the resolver's "cannot answer now", with the reason: not the deny
answer (NXDOMAIN/REFUSED) a client would cache as the policy's word. Real packets from
dnspython over UDP and TCP, a real upstream on loopback."""

from __future__ import annotations

import logging

import pytest

from egressguard.dns import DenyRcode, FilterConfig, FilterThread
from egressguard.dns.wire import EDE_NOT_READY
from egressguard.engine.holder import SnapshotHolder
from tests.dns.conftest import ListSink
from tests.dns.test_filter import addresses, ask, ede, rcode
from tests.dns.upstream_server import Upstream

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("deny", [DenyRcode.NXDOMAIN, DenyRcode.REFUSED])
def test_a_suspended_cluster_answers_servfail_with_the_reason_for_every_name(
        upstream: Upstream, holder: SnapshotHolder, sink: ListSink, tcp: bool,
        deny: DenyRcode, caplog: pytest.LogCaptureFixture) -> None:
    config = FilterConfig(listen=("127.0.0.1", 0), upstream=upstream.address, timeout=1.0,
                          deny_rcode=deny)
    with FilterThread(holder, config, sink) as running:
        addr, checkpoint = running.address, running.filter.checkpoint
        assert addresses(ask(addr, "allowed.example.com", tcp=tcp))  # enforcing
        assert rcode(ask(addr, "unlisted.org", tcp=tcp)) == deny.name
        asked_before = len(upstream.resolver.queries)
        with caplog.at_level(logging.WARNING, logger="egressguard"):
            checkpoint.suspend("key vault://cmk/keys/audit disabled")
            for name in ("allowed.example.com", "unlisted.org", "x.blocked.net"):
                reply = ask(addr, name, tcp=tcp)
                assert rcode(reply) == "SERVFAIL", name
                assert not addresses(reply)
                assert (EDE_NOT_READY, "cluster suspended: key vault://cmk/keys/audit "
                        "disabled") in ede(reply)
        assert len(upstream.resolver.queries) == asked_before   # nothing resolved while suspended
        assert caplog.text.count("SERVFAIL while the cluster is suspended: key "
                                 "vault://cmk/keys/audit disabled") == 1  # once, not per query
        checkpoint.resume()
        assert addresses(ask(addr, "allowed.example.com", tcp=tcp))
        assert rcode(ask(addr, "unlisted.org", tcp=tcp)) == deny.name
