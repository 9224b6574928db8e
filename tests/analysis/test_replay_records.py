"""Replay rebuilds the request from a record as each enforcement point writes it: the
gateway records its peer as `ip:port` (`[v6]:port`), the DNS filter a bare address."""

from __future__ import annotations

import ipaddress

import pytest

from egressguard.analysis.replay import replay, request_of
from egressguard.catalog import references
from egressguard.engine import compile_policy
from egressguard.policy import load_policy_text

SOURCED = """restrict_outbound_network_access: true
application_rule_collections:
  - name: apps
    rules:
      - {name: ci, targets: [pypi.org], protocols: ["https:443"], sources: [10.0.0.0/24]}
"""


@pytest.mark.parametrize(("recorded", "source"), [
    ("10.0.0.5:51234", "10.0.0.5"), ("10.0.0.5", "10.0.0.5"),
    ("[2001:db8::5]:443", "2001:db8::5"), ("2001:db8::5", "2001:db8::5"), ("", None),
])
def test_the_client_address_is_read_with_or_without_its_port(recorded: str, source):
    request = request_of({"kind": "connect", "host": "pypi.org", "port": 443,
                          "client_address": recorded})
    assert request is not None
    assert request.source == (ipaddress.ip_address(source) if source else None)


def test_gateway_records_replay_against_source_scoped_rules():
    snapshot = compile_policy(load_policy_text(SOURCED, "p"), references())
    records = [{"kind": "connect", "host": "pypi.org", "port": 443, "permitted": False,
                "client_address": f"10.0.{net}.5:4000{net}"} for net in (0, 1)]
    result = replay(records, snapshot)
    assert result.skipped == 0
    # Counted per client address, not per connection (the port is ephemeral).
    assert dict(result.newly_allowed) == {("10.0.0.5", "connect", "pypi.org:443"): 1}


def test_an_unreadable_client_address_is_skipped_not_guessed():
    assert request_of({"kind": "connect", "host": "pypi.org", "port": 443,
                       "client_address": "not-an-ip:80"}) is None
