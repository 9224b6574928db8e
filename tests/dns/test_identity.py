"""The DNS filter's only way to tell who asks is the source address: an identity whose
`sources` hold it gets its scoped rules, and its name is on the audit record."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from egressguard.engine.holder import SnapshotHolder
from egressguard.policyfile import load_active
from tests.dns.conftest import ListSink

pytestmark = pytest.mark.timeout(30)
SCOPED = """\
restrict_outbound_network_access: true
{require}
identities:
  loopback-clients: {{sources: [127.0.0.0/8]}}
application_rule_collections:
  - name: for-loopback
    priority: 100
    identities: [loopback-clients]
    rules:
      - {{name: example, targets: ['*.example.com'], protocols: ['https:443']}}
"""


def ask(addr: tuple[str, int], name: str) -> str:
    reply = dns.query.udp(dns.message.make_query(name, "A"), addr[0], port=addr[1],
                          timeout=5)
    return dns.rcode.to_text(reply.rcode())


@pytest.mark.parametrize("mapped", [True, False])
def test_source_mapped_identity_gets_its_scoped_rules_and_is_recorded(
        start_filter: Callable[..., tuple[str, int]], holder: SnapshotHolder,
        sink: ListSink, policy_file: Path, mapped: bool) -> None:
    text = SCOPED.format(require="require_identity: true")
    if not mapped:
        text = text.replace("127.0.0.0/8", "10.99.0.0/16")
    policy_file.write_text(text)
    holder.swap(load_active(policy_file))
    addr = start_filter()
    assert ask(addr, "allowed.example.com") == ("NOERROR" if mapped else "NXDOMAIN")
    deadline = time.monotonic() + 3
    while not sink.events and time.monotonic() < deadline:
        time.sleep(0.02)
    event = sink.events[0]
    if mapped:
        assert (event.client_identity, event.verdict) == ("loopback-clients", "allow")
    else:  # required and no identity's sources hold 127.0.0.1
        assert (event.client_identity, event.rule) == ("", "guard:identity-required")
